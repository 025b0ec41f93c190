"""The artifact digest and its check (lightbox.adapters.mlflow_registry), on plain folders: what is
hashed, what the refusal names, and the policy for a version with no recorded digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightbox.adapters.mlflow_registry import (
    DIGEST_FILES_TAG,
    DIGEST_TAG,
    ArtifactMismatch,
    ArtifactUnverified,
    artifact_digest,
    verify_artifacts,
)
from lightbox.settings import Settings


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "data").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "data" / "model.pt2").write_bytes(b"\x01" * 64)
    return root


def check(folder: Path, tags: dict[str, str], *, allow_unverified: bool = False) -> None:
    verify_artifacts(
        Settings(project_dir=folder.parent),
        "7",
        tags,
        artifact_digest(folder),
        allow_unverified=allow_unverified,
    )


def test_digest_covers_every_file_but_the_one_mlflow_writes_at_download(folder: Path) -> None:
    before = artifact_digest(folder)
    assert set(before.files) == {"MLmodel", "data/model.pt2"}
    (folder / "registered_model_meta").write_text("model_name: lightbox\nmodel_version: 7\n")
    assert artifact_digest(folder) == before
    tags = before.tags()
    assert tags[DIGEST_TAG] == before.digest and json.loads(tags[DIGEST_FILES_TAG]) == before.files


def test_same_size_change_is_refused_naming_version_and_file(folder: Path) -> None:
    tags = artifact_digest(folder).tags()
    check(folder, tags)  # unchanged: loads
    (folder / "data" / "model.pt2").write_bytes(b"\x01" * 32 + b"\x00" * 32)
    with pytest.raises(ArtifactMismatch, match=r"lightbox v7: file data/model\.pt2 differs, not the bytes"):
        check(folder, tags)
    with pytest.raises(ArtifactMismatch, match="lightbox v7"):  # even where unverified versions may load
        check(folder, tags, allow_unverified=True)


def test_missing_and_added_files_are_named(folder: Path) -> None:
    tags = artifact_digest(folder).tags()
    (folder / "data" / "model.pt2").unlink()
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(ArtifactMismatch, match=r"file data/model\.pt2 is missing, extra\.bin was added"):
        check(folder, tags)
    # Without the per-file list (a tag too long to keep), the digest alone still refuses.
    with pytest.raises(ArtifactMismatch, match="its artifact files changed"):
        check(folder, {DIGEST_TAG: tags[DIGEST_TAG]})


def test_no_recorded_digest_loads_only_where_allowed(folder: Path) -> None:
    with pytest.raises(
        ArtifactUnverified, match=r"v7 has no recorded artifact digest.*lightbox gates --version 7"
    ):
        check(folder, {"gate.passed": "true"})
    check(folder, {}, allow_unverified=True)
