from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightbox import dataset, manifest
from lightbox.dataset import CONTENT_TAGS, DEFECT_TAGS, TAG_VOCABULARY
from lightbox.distortions import KINDS, LEVELS
from lightbox.settings import Settings
from pipelines import data

pytestmark = pytest.mark.unit


# --- score ---------------------------------------------------------------------------------------------


def test_pristine_scores_one() -> None:
    assert dataset.score_for([]) == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_score_falls_strictly_with_level(kind: str) -> None:
    scores = [dataset.score_for([(kind, lvl)]) for lvl in LEVELS]
    assert all(1.0 > a > b > 0.0 for a, b in zip(scores, scores[1:], strict=False)), scores
    assert scores[-1] < 0.3  # the strongest level is clearly bad, not a nudge


def test_strong_blur_is_in_the_intended_range() -> None:
    assert 0.15 <= dataset.score_for([("blur", 5)]) <= 0.25


def test_a_second_distortion_lowers_the_score() -> None:
    one = dataset.score_for([("blur", 2)])
    assert dataset.score_for([("blur", 2), ("noise", 1)]) < one
    assert dataset.score_for([("blur", 3), ("noise", 2)]) < dataset.score_for([("blur", 2), ("noise", 2)])


def test_score_rejects_unknown_kind_and_level() -> None:
    with pytest.raises(ValueError, match="'smudge'"):
        dataset.score_for([("smudge", 2)])
    with pytest.raises(ValueError, match="7"):
        dataset.score_for([("blur", 7)])


# --- tags ----------------------------------------------------------------------------------------------


def test_level_one_is_untagged_and_level_two_is_tagged() -> None:
    assert dataset.tags_for([("blur", 1)], ["animal"]) == ["animal"]
    assert dataset.tags_for([("blur", 2)], ["animal"]) == ["animal", "blurry"]


def test_every_kind_maps_to_a_defect_tag_and_tags_are_sorted_and_known() -> None:
    tags = dataset.tags_for([(kind, 5) for kind in KINDS], ["space", "object"])
    assert tags == sorted(tags)
    assert set(DEFECT_TAGS) <= set(tags) and set(tags) <= set(TAG_VOCABULARY)


def test_unknown_content_tag_is_rejected() -> None:
    with pytest.raises(ValueError, match="dog"):
        dataset.tags_for([], ["dog"])


# --- splits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 7, 20, 50])
def test_splits_cover_every_source_once_and_are_non_empty(n: int) -> None:
    ids = [f"s{i}" for i in range(n)]
    splits = dataset.assign_splits(ids, seed=1)
    assert set(splits) == set(ids)
    assert set(splits.values()) == {"train", "validation", "test"}


def test_splits_are_deterministic_and_independent_of_input_order() -> None:
    ids = [f"s{i}" for i in range(20)]
    assert dataset.assign_splits(ids, 3) == dataset.assign_splits(list(reversed(ids)), 3)
    assert dataset.assign_splits(ids, 3) != dataset.assign_splits(ids, 4)


def test_split_sizes_follow_fractions() -> None:
    values = list(dataset.assign_splits([f"s{i}" for i in range(100)], 0).values())
    assert (values.count("train"), values.count("validation"), values.count("test")) == (70, 15, 15)


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ValueError, match="fractions"):
        dataset.assign_splits(["a", "b", "c"], 0, fractions=(0.5, 0.5, 0.5))


# --- sources -------------------------------------------------------------------------------------------


def test_procedural_scene_is_seeded_and_colourful() -> None:
    img, tags = dataset.procedural_scene(5, 64)
    again, _ = dataset.procedural_scene(5, 64)
    other, _ = dataset.procedural_scene(6, 64)
    assert img.mode == "RGB" and max(img.size) == 64
    assert np.array_equal(np.asarray(img), np.asarray(again))
    assert not np.array_equal(np.asarray(img), np.asarray(other)) or img.size != other.size
    assert "synthetic" in tags and set(tags) <= set(CONTENT_TAGS)
    hsv = np.asarray(img.convert("HSV"))
    assert hsv[..., 1].mean() > 20 and np.asarray(img).std() > 10  # coloured and not flat


def test_photo_sources_are_rgb_with_content_tags() -> None:
    photos = dataset.photo_sources()
    ids = [source_id for source_id, _, _ in photos]
    assert len(ids) >= 5 and len(set(ids)) == len(ids)
    for _, img, tags in photos:
        assert img.mode == "RGB" and min(img.size) >= 64
        assert tags and set(tags) <= set(CONTENT_TAGS)


# --- pipelines.data ------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(project_dir=tmp_path, dataset_sources=5, dataset_variants=3, image_max_side=64)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _manifest(settings: Settings) -> list[dict[str, str]]:
    with (settings.data_dir / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_build_is_byte_for_byte_reproducible(settings: Settings) -> None:
    first = data.run(settings)
    before = _snapshot(settings.data_dir)
    data.run(settings)
    assert _snapshot(settings.data_dir) == before
    assert first.n_images == 5 * (3 + 1 + data.CLEAN_VARIANTS) and first.format == "imagefolder"
    # Rebuilding replaced the folder in place: no temp or old copies are left beside it.
    assert sorted(p.name for p in settings.data_dir.parent.iterdir() if p.name.startswith(".data")) == []


def test_other_seed_gives_other_data(settings: Settings) -> None:
    data.run(settings)
    before = _snapshot(settings.data_dir)
    data.run(settings, seed=settings.dataset_seed + 1)
    assert _snapshot(settings.data_dir) != before


def test_manifest_format_and_consistency(settings: Settings) -> None:
    result = data.run(settings, n_sources=12, variants=2)
    header = (settings.data_dir / "manifest.csv").read_text().splitlines()[0]
    assert header == ",".join((*manifest.COLUMNS, "distortions"))
    rows = _manifest(settings)
    assert [r["image_id"] for r in rows] == sorted(r["image_id"] for r in rows)
    assert len(rows) == result.n_images == 12 * (2 + 1 + data.CLEAN_VARIANTS) and sum(
        result.splits.values()
    ) == len(rows)
    assert any(r["group"].startswith("scene-") for r in rows)  # more sources than bundled photos
    spec = manifest.read_label_spec(settings.data_dir)
    assert spec.source_format == "synthetic" and spec.score_range == (0.0, 1.0)
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["group"], set()).add(r["split"])
        path = settings.data_dir / r["path"]
        assert r["image_id"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]  # content-addressed
        with Image.open(path) as img:
            # <= 64: the clean 0.75x rendition is smaller than its source
            assert img.size == (int(r["width"]), int(r["height"])) and max(img.size) <= 64
            assert img.format == ("JPEG" if r["path"].endswith(".jpg") else "PNG")
        if "jpeg:" in r["distortions"]:
            assert r["path"].endswith(".jpg")  # the JPEG artefacts are the file's own bytes
        assert set(r["tags"].split("|")) <= set(TAG_VOCABULARY)
        if r["distortions"] == "none":
            assert float(r["score"]) == 1.0
        else:
            assert 0.0 <= float(r["score"]) < 1.0
    assert all(len(s) == 1 for s in split_of.values())  # a source's variants never straddle splits
    # Every tag trained on has examples in train (the importer moves whole groups there if needed).
    in_train = {t for r in rows if r["split"] == "train" for t in r["tags"].split("|") if t}
    assert set(spec.tags) <= in_train


def test_a_crash_mid_build_keeps_the_previous_dataset(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    data.run(settings)
    before = _snapshot(settings.data_dir)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(manifest, "write_manifest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        data.run(settings, seed=99)
    assert _snapshot(settings.data_dir) == before
    assert [p.name for p in settings.data_dir.parent.iterdir() if p.name.startswith(".data")] == []
