from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from lightbox import manifest
from lightbox.settings import Settings
from pipelines import data, validate_data
from pipelines.validate_data import DataValidationError

pytestmark = pytest.mark.unit

Rows = list[dict[str, str]]

# 5 sources x (pristine + 3 distorted + the clean renditions)
IMAGES = 5 * (1 + 3 + data.CLEAN_VARIANTS)


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        project_dir=tmp_path, dataset_sources=5, dataset_variants=3, image_max_side=64, **overrides
    )


@pytest.fixture
def built(tmp_path: Path) -> Settings:
    settings = _settings(tmp_path)
    data.run(settings)
    return settings


def _read(settings: Settings) -> tuple[list[str], Rows]:
    return manifest.read_csv(settings.data_dir / manifest.MANIFEST_NAME)


def _edit(settings: Settings, change: Callable[[Rows], None]) -> None:
    header, rows = _read(settings)
    change(rows)
    with (settings.data_dir / manifest.MANIFEST_NAME).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_a_fresh_build_passes_and_writes_both_reports(built: Settings) -> None:
    manifest_before = (built.data_dir / manifest.MANIFEST_NAME).read_bytes()
    result = validate_data.run(built)
    assert result.passed and result.n_images == IMAGES and result.quarantined == []
    assert all(c.success for c in result.checks) and len(result.checks) >= 10
    assert "PASSED" in result.report_md.read_text()
    assert "<table>" in result.report_html.read_text()
    assert (built.data_dir / manifest.MANIFEST_NAME).read_bytes() == manifest_before  # untouched when clean


def test_corrupt_images_are_quarantined_not_deleted(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_quarantine_fraction=0.2)
    data.run(settings)
    _, rows = _read(settings)
    truncated, garbage = rows[1], rows[2]
    truncated_bytes = (settings.data_dir / truncated["path"]).read_bytes()[:200]
    (settings.data_dir / truncated["path"]).write_bytes(truncated_bytes)
    (settings.data_dir / garbage["path"]).write_bytes(b"definitely not an image")

    result = validate_data.run(settings)

    assert result.passed and result.n_images == IMAGES - 2
    assert {image_id for image_id, _ in result.quarantined} == {truncated["image_id"], garbage["image_id"]}
    assert result.quarantine_path is not None and result.quarantine_path.parent == settings.quarantine_dir
    # Nothing lost: the exact bytes now sit in the quarantine folder, with the rows that pointed at them.
    assert (result.quarantine_path / truncated["path"]).read_bytes() == truncated_bytes
    assert (result.quarantine_path / garbage["path"]).read_bytes() == b"definitely not an image"
    assert not (settings.data_dir / truncated["path"]).exists()
    assert "quarantined.csv" in {p.name for p in result.quarantine_path.iterdir()}
    _, kept = _read(settings)
    assert len(kept) == IMAGES - 2 and truncated["image_id"] not in {r["image_id"] for r in kept}
    assert truncated["image_id"] in result.report_md.read_text()
    # The cleaned dataset validates again with nothing further to quarantine.
    assert validate_data.run(settings).quarantined == []


def test_too_many_bad_images_fail_after_quarantine(built: Settings) -> None:
    _, rows = _read(built)
    for row in rows[:3]:  # 3 of 30 = 10%, over the default 5%
        (built.data_dir / row["path"]).unlink()
    with pytest.raises(DataValidationError, match=rf"quarantined 3 of {IMAGES} images") as info:
        validate_data.run(built)
    assert info.value.result.report_md.is_file()
    assert {reason for _, reason in info.value.result.quarantined} == {"file is missing"}


def _bad_score(rows: Rows) -> None:
    rows[0]["score"] = "1.7"


def _unknown_tag(rows: Rows) -> None:
    rows[0]["tags"] = rows[0]["tags"] + "|sunset"


def _duplicate_id(rows: Rows) -> None:
    rows[1]["image_id"] = rows[0]["image_id"]


def _leaky_group(rows: Rows) -> None:
    other = next(s for s in ("train", "validation", "test") if s != rows[0]["split"])
    rows[0]["split"] = other


@pytest.mark.parametrize(
    ("change", "message", "example"),
    [
        (_bad_score, "score is within the declared range 0..1", "1.7 ("),
        (_unknown_tag, "every tag is in the label spec's vocabulary", "sunset ("),
        (_duplicate_id, "image_id is unique", "unexpected"),
        (_leaky_group, "is in two splits", "unexpected"),
    ],
)
def test_bad_manifest_raises_a_readable_error_after_the_report(
    built: Settings, change: Callable[[Rows], None], message: str, example: str
) -> None:
    _edit(built, change)
    with pytest.raises(DataValidationError) as info:
        validate_data.run(built)
    text = str(info.value)
    assert message in text and example in text
    assert str(built.reports_dir / "data_validation.md") in text
    report = (built.reports_dir / "data_validation.md").read_text()
    assert "FAILED" in report and message in report
    assert info.value.result.quarantined == []  # manifest problems are reported, not quarantined


def test_missing_manifest_fails_with_a_report(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(DataValidationError, match="manifest not found.*lightbox data import"):
        validate_data.run(settings)
    assert (settings.reports_dir / "data_validation.html").is_file()


def test_a_size_that_disagrees_with_the_image_and_an_unreferenced_file_are_quarantined(
    built: Settings,
) -> None:
    _, rows = _read(built)
    wrong = rows[0]["image_id"]
    _edit(built, lambda rs: rs[0].update(width="1", height="1"))
    stray = built.data_dir / "images" / "stray.jpg"
    stray.write_bytes(b"not an image, and in no manifest row")
    result = validate_data.run(built.model_copy(update={"max_quarantine_fraction": 0.2}))
    reasons = dict(result.quarantined)
    assert reasons[wrong].startswith("manifest says 1x1 but the image is")
    assert reasons["images/stray.jpg"] == "not in the manifest"
    assert not stray.exists() and result.quarantine_path is not None
    assert (result.quarantine_path / "images" / "stray.jpg").is_file()  # moved, not deleted


def test_a_foreign_csv_is_reported_and_left_untouched(tmp_path: Path) -> None:
    """A user's own 3-column CSV dropped in as data/manifest.csv is not ours to cut down or move."""
    settings = _settings(tmp_path)
    settings.data_dir.mkdir()
    text = "file,rating,label\n" + "".join(f"img{i}.jpg,{i},cat\n" for i in range(12))
    (settings.data_dir / "manifest.csv").write_text(text)
    with pytest.raises(DataValidationError, match="not a lightbox manifest.*lightbox data import"):
        validate_data.run(settings)
    assert (settings.data_dir / "manifest.csv").read_text() == text
    assert not settings.quarantine_dir.exists()
