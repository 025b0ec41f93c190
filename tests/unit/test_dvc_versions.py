"""Dataset versions on a real DVC + git repository: the record a training run names must be the data
it reads, and versioning leaves the project's git clean and quiet."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from lightbox.adapters import dvc_repo
from lightbox.settings import Settings

pytestmark = pytest.mark.unit


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def _versioned(s: Settings, text: str) -> dvc_repo.DatasetVersion:
    s.data_dir.mkdir(parents=True, exist_ok=True)
    (s.data_dir / "manifest.csv").write_text(text)
    version = dvc_repo.version_data(s)
    dvc_repo.save_version(s, version)
    return version


def test_versioning_commits_what_dvc_staged_and_prints_no_git_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Settings(project_dir=tmp_path / "p")
    with caplog.at_level(logging.INFO):
        _versioned(s, "image_id\na\n")
    paths = (".dvc", ".dvcignore", "data.dvc", ".gitignore")
    status = _git(s.project_dir, "status", "--porcelain", "--", *paths)
    assert status == ""  # .dvc/.gitignore was left staged
    assert "To track the changes with git" not in caplog.text and "You can now commit" not in caplog.text


def test_a_data_dvc_checked_out_from_another_version_is_not_named_as_the_last_one(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path / "p")
    first = _versioned(s, "image_id\na\n")
    second = _versioned(s, "image_id\na\nb\n")
    assert first.md5 != second.md5 and dvc_repo.load_version(s).md5 == second.md5
    # Back to the first version, as a user does: its data.dvc from git, its files from DVC.
    _git(s.project_dir, "checkout", first.git_rev, "--", "data.dvc")
    assert dvc_repo.restore_path(s, s.data_subdir)
    moved = r"data\.dvc is at version .*run `lightbox data version`"
    with pytest.raises(dvc_repo.NoDatasetVersion, match=moved):
        dvc_repo.load_version(s)
    again = dvc_repo.version_data(s)  # `lightbox data version` records it
    dvc_repo.save_version(s, again)
    assert dvc_repo.load_version(s).md5 == first.md5


def test_data_diff_says_when_the_labels_changed_meaning(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lightbox import manifest
    from lightbox.cli import app

    s = Settings(project_dir=tmp_path / "p")
    s.data_dir.mkdir(parents=True)
    rows = "image_id,split,score,tags\nabc,train,5,night|portrait\n"
    spec = manifest.LabelSpec(tag_counts={"night": 9, "portrait": 9}, score_name="stars", score_range=(1, 5))
    (s.data_dir / manifest.LABELS_NAME).write_text(spec.to_json())
    first = _versioned(s, rows)
    relabelled = manifest.LabelSpec(
        tag_counts={"people": 9, "portrait": 2}, score_name="stars", score_range=(0, 10)
    )
    (s.data_dir / manifest.LABELS_NAME).write_text(relabelled.to_json())
    second = _versioned(s, rows.replace(",5,night|portrait", ",5,people"))
    env = {"LIGHTBOX_PROJECT_DIR": str(s.project_dir)}
    result = CliRunner().invoke(app, ["data", "diff", first.git_rev, second.git_rev], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "1 relabelled" in lines[0]
    assert lines[1:4] == [
        "! score scale: 1..5 -> 0..10",
        "! tags added: people",
        "! tags removed: night, portrait",
    ]
