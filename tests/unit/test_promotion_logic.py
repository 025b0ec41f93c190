import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from photo_samples import synthetic_spec

from lightbox import photos
from lightbox.adapters import dvc_repo
from lightbox.manifest import (
    COLUMNS,
    GOLDEN_SPLIT,
    MANIFEST_NAME,
    LabelSpec,
    count_tags,
    read_label_spec,
    read_manifest,
    write_label_spec,
    write_manifest,
)
from lightbox.settings import Settings
from pipelines import golden
from pipelines.lineage import Lineage, format_lineage, parse_model_uri
from pipelines.promote import previous_alias_for


def test_previous_alias(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path)
    assert previous_alias_for("champion", s) == "previous"
    assert previous_alias_for("staging", s) == "staging-previous"


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/lightbox/3") == ("lightbox", "3", None)
    assert parse_model_uri("models:/lightbox@champion") == ("lightbox", None, "champion")
    with pytest.raises(ValueError, match="models:/NAME/VERSION"):
        parse_model_uri("runs:/abc/model")


def test_format_lineage_names_every_link() -> None:
    text = format_lineage(
        Lineage(
            "lightbox", "3", ["champion"], "run1", "tune-abc", "1", "abc.dir", "f" * 40,
            "dvc://data@fff#md5=abc.dir", "lightbox-data-abc", "abc", "image_quality_v1", "e" * 40,
            "true", "ci", "tags [dog], score rating on 1..10",
        )
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[0].startswith("model     models:/lightbox/3 (@champion)")
    assert lines[1] == "  answers   tags [dog], score rating on 1..10"
    assert "run1" in lines[2] and "abc.dir" in lines[3] and "f" * 40 in lines[3]
    assert "image_quality_v1" in lines[5] and "e" * 40 in lines[6]


def test_synthetic_golden_grid_is_written_in_the_manifest_contract(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path, golden_sources=2, image_max_side=96)
    golden.build(s, synthetic_spec())
    rows = read_manifest(s.golden_dir)
    assert len(rows) == 2 * 31 and {r["split"] for r in rows} == {GOLDEN_SPLIT}
    assert set(rows[0]) == set(COLUMNS) | {"distortions"}
    # The dataset's labels (tags, score scale), with the golden set's own tag counts.
    spec = read_label_spec(s.golden_dir)
    assert spec == replace(synthetic_spec(), tag_counts=count_tags(rows))
    assert spec.score_range == (0.0, 1.0) and spec.tag_counts["blurry"] == 2 * 4  # levels 2..5
    by_group: dict[str, set[str]] = {}
    for r in rows:
        by_group.setdefault(r["group"], set()).add(r["distortions"])
        data = (s.golden_dir / r["path"]).read_bytes()
        # Content-addressed like an import: the id is the file's hash, the name says what it shows.
        assert r["image_id"] == hashlib.sha256(data).hexdigest()[:16]
        assert r["path"] == f"images/{r['image_id']}{Path(r['path']).suffix}"
        expected = (
            r["group"]
            + "-"
            + (r["distortions"].replace(":", "-") if r["distortions"] != "none" else "pristine")
        )
        assert r["original"] == expected
        assert r["phash"] == photos.inspect(data, max_pixels=10**7, min_side=1).phash
    assert set(by_group) == {"golden-000", "golden-001"}
    assert all(len(d) == 31 and "none" in d and "blur:5" in d for d in by_group.values())
    pristine = [r for r in rows if r["distortions"] == "none"]
    assert all(float(r["score"]) == 1.0 for r in pristine)
    assert all("noisy" in r["tags"].split("|") for r in rows if r["distortions"] == "noise:5")
    first = {r["path"]: (s.golden_dir / r["path"]).read_bytes() for r in rows}
    manifest = (s.golden_dir / MANIFEST_NAME).read_bytes()
    golden.build(s, synthetic_spec())
    assert all((s.golden_dir / p).read_bytes() == b for p, b in first.items())
    assert (s.golden_dir / MANIFEST_NAME).read_bytes() == manifest
    # A different seed stream from training: the first golden scene differs from training scene 0.
    from lightbox.dataset import procedural_scene
    from pipelines.data import _child_seed

    train0 = procedural_scene(_child_seed(s.dataset_seed, 0, 0), 96)[0]
    gold0 = procedural_scene(_child_seed(s.golden_seed, golden.GOLDEN_STREAM, 0), 96)[0]
    assert train0.tobytes() != gold0.tobytes()


def _imported_golden(s: Settings) -> list[dict[str, str]]:
    """A tiny golden slice as the importer writes it: two groups, a 1..10 rating and tags."""
    from PIL import Image

    spec = LabelSpec(
        tag_counts={"dog": 20, "sunset": 9},
        score_name="rating",
        score_range=(1.0, 10.0),
        source_format="imagefolder",
    )
    (s.golden_dir / "images").mkdir(parents=True)
    rows = []
    for i, (colour, score, tags) in enumerate(
        [((200, 30, 30), "7.5", "dog"), ((20, 20, 200), "", "dog|sunset")]
    ):
        path = s.golden_dir / "images" / f"img{i}.png"
        Image.new("RGB", (40, 30), colour).save(path)
        image_id = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        path.rename(s.golden_dir / "images" / f"{image_id}.png")
        rows.append(
            {
                "image_id": image_id, "path": f"images/{image_id}.png", "split": GOLDEN_SPLIT,
                "group": f"g{i}", "score": score, "tags": tags, "width": "40", "height": "30",
                "phash": "0" * 16, "original": f"photos/{i}.png",
            }
        )  # fmt: skip
    write_manifest(s.golden_dir, rows)
    write_label_spec(s.golden_dir, spec)
    write_label_spec(_data_dir(s), spec)
    return rows


def _data_dir(s: Settings) -> Path:
    s.data_dir.mkdir(parents=True, exist_ok=True)
    return s.data_dir


def test_an_imported_golden_set_is_frozen_as_is_and_restored_from_dvc(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path)
    _imported_golden(s)
    before = {p.relative_to(s.golden_dir): p.read_bytes() for p in s.golden_dir.rglob("*") if p.is_file()}
    result = golden.run(s)
    assert result.rendered is False and result.n_images == 2 and result.n_groups == 2
    assert result.version.md5.endswith(".dir") and result.version.files == 4  # 2 images, manifest, labels
    assert dvc_repo.tracked_md5(s, s.golden_subdir) == result.version.md5
    after = {p.relative_to(s.golden_dir): p.read_bytes() for p in s.golden_dir.rglob("*") if p.is_file()}
    assert after == before  # versioned, never rewritten
    # A fresh checkout (the folder gone, golden.dvc kept): restored from DVC, byte for byte.
    shutil.rmtree(s.golden_dir)
    again = golden.run(s)
    assert again.rendered is False and again.version.md5 == result.version.md5
    restored = {p.relative_to(s.golden_dir): p.read_bytes() for p in s.golden_dir.rglob("*") if p.is_file()}
    assert restored == before
    # Tracked, but gone from the cache and the remote too: never re-invented, and it says how to recover.
    for folder in (s.golden_dir, s.project_dir / ".dvc" / "cache", s.state / "dvc-remote"):
        shutil.rmtree(folder)
    with pytest.raises(golden.GoldenSetMissing, match="dvc pull golden.dvc"):
        golden.run(s)
    assert not s.golden_dir.exists()


def test_an_imported_dataset_without_a_golden_set_says_how_to_get_one(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path)
    write_label_spec(_data_dir(s), LabelSpec(tag_counts={"dog": 9}, source_format="imagefolder"))
    with pytest.raises(golden.GoldenSetMissing) as missing:
        golden.run(s)
    message = str(missing.value)
    assert "\n" not in message and "--golden" in message and "golden_fraction > 0" in message
    assert not s.golden_dir.exists()  # nothing invented from the user's data
    _imported_golden(s)
    with pytest.raises(golden.GoldenSetMissing, match="--rebuild"):
        golden.run(s, rebuild=True)


def test_a_golden_set_nobody_versioned_is_refused_before_anything_is_measured(tmp_path: Path) -> None:
    """The per-stage commands without `lightbox golden`: golden files, no golden.dvc. The gates and a
    promotion (both through validate_model.run) refuse in one line that says what to run, before any
    registry read or measurement (no MLflow store is even created), not minutes later with every golden
    check "missing"."""
    from lightbox.errors import known_error
    from pipelines import validate_model

    s = Settings(project_dir=tmp_path)
    _imported_golden(s)
    with pytest.raises(golden.GoldenSetMissing) as refused:
        validate_model.run(s, "1")
    message, code = known_error(refused.value) or ("", 0)
    assert code == 1 and "\n" not in message
    assert message.startswith("golden.dvc is missing: the golden set at ")
    assert "run `lightbox golden` to version it" in message
    assert not (s.state / "mlflow.db").exists()


def test_a_golden_folder_in_an_old_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path)
    write_label_spec(_data_dir(s), synthetic_spec())
    s.golden_dir.mkdir()
    (s.golden_dir / MANIFEST_NAME).write_text("image_id,path,source_id,split,score,tags,distortions\n")
    with pytest.raises(golden.GoldenSetMissing, match="lightbox golden --rebuild"):
        golden.run(s)


@pytest.mark.parametrize(
    ("alias", "why"),
    [
        ("latest", "reserved by MLflow"),
        ("LATEST", "reserved by MLflow"),
        ("v3", "reserved by MLflow"),
        ("bad alias!", "letters, digits"),
        ("a" * 256, "at most 255"),
    ],
)
def test_an_alias_the_registry_would_refuse_is_refused_before_anything_moves(
    tmp_path: Path, alias: str, why: str
) -> None:
    """A dry run that passes must mean the real promotion can: 'latest' and 'v3' are MLflow's own names
    (the newest version, version 3), and a name MLflow refuses had been refused only after the previous
    alias had moved. Nothing is read from the registry first (it points nowhere here)."""
    from lightbox.aliases import BadAlias
    from pipelines import promote

    s = Settings(project_dir=tmp_path, mlflow_tracking_uri="http://127.0.0.1:9")
    with pytest.raises(BadAlias, match=why):
        promote.run(s, "1", alias=alias, dry_run=True)
    with pytest.raises(BadAlias, match=why):
        promote.rollback(s, alias=alias, dry_run=True)


def test_alias_settings_must_be_distinct_valid_names(tmp_path: Path) -> None:
    """LIGHTBOX_PREVIOUS_ALIAS=champion had made a promotion set both aliases on one version, losing the
    version to roll back to."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="champion_alias and previous_alias are both 'champion'"):
        Settings(project_dir=tmp_path, previous_alias="champion")
    with pytest.raises(ValidationError, match="reserved by MLflow"):
        Settings(project_dir=tmp_path, challenger_alias="latest")
    assert Settings(project_dir=tmp_path, champion_alias="prod").previous_alias == "previous"
