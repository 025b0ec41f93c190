"""Bulk scoring on a real (local, 2-CPU) Ray with a registered model: every good image gets the numbers
``Predictor.predict`` gives it, every bad one a row with its error, and a job SIGKILLed mid-way and run
again leaves exactly one row per image."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from photo_samples import jpeg, photo
from PIL import Image

from lightbox.catalog import StorageUnavailable
from lightbox.imaging import preprocess_bytes
from lightbox.photos import content_id
from lightbox.results import read_parts
from lightbox.settings import CODE_ROOT, Settings
from pipelines import score_catalog
from training.predictor import RegistryLoader

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_PIXELS = 1_000_000  # small, so a 1200x1200 PNG is the decompression bomb
BAD = {"truncated.jpg", "garbage.jpg", "bomb.png", "missing.jpg"}


def _catalog(root: Path, n_good: int) -> Path:
    """n_good photos (JPEG, PNG and HEIC, one with an EXIF rotation), one copy of a photo under a second
    name, three broken files and a missing one; returns the list of URIs (one a line)."""
    pics = root / "pics"
    pics.mkdir(parents=True)
    for i in range(n_good):
        img = photo(i, (96 + 8 * (i % 3), 64))
        if i % 4 == 1:
            buf = io.BytesIO()
            img.save(buf, "PNG")
            (pics / f"img_{i:03d}.png").write_bytes(buf.getvalue())
        elif i % 4 == 2:
            exif = Image.Exif()
            exif[0x0112] = 6  # stored sideways: upright is a quarter turn
            (pics / f"img_{i:03d}.jpg").write_bytes(jpeg(img, exif=exif.tobytes()))
        elif i % 4 == 3:  # a phone's photo
            buf = io.BytesIO()
            img.save(buf, "HEIF")
            (pics / f"IMG_{i:03d}.HEIC").write_bytes(buf.getvalue())
        else:
            (pics / f"img_{i:03d}.jpg").write_bytes(jpeg(img))
    (pics / "copy_of_000.jpg").write_bytes((pics / "img_000.jpg").read_bytes())
    whole = (pics / "img_000.jpg").read_bytes()
    (pics / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (pics / "garbage.jpg").write_bytes(b"this is no image at all")
    buf = io.BytesIO()
    Image.new("L", (1200, 1200)).save(buf, "PNG")  # 1.44 MP > MAX_PIXELS, a few KB on disk
    (pics / "bomb.png").write_bytes(buf.getvalue())
    listing = root / "catalog.txt"
    names = sorted(p.name for p in pics.iterdir())
    listing.write_text("".join(f"pics/{n}\n" for n in names) + "# a comment\n\npics/missing.jpg\n")
    return listing


def _bulk_settings(base: Settings, **overrides: object) -> Settings:
    return Settings(
        project_dir=base.project_dir,
        ray_num_cpus=2,
        max_pixels=MAX_PIXELS,
        score_batch_size=4,
        score_part_rows=3,
        **overrides,
    )


def test_bulk_scores_match_the_predictor_and_bad_images_are_rows(registered_champion, tmp_path: Path) -> None:
    settings = _bulk_settings(registered_champion.settings)
    listing = _catalog(tmp_path / "catalog", n_good=16)
    out = tmp_path / "scores"

    result = score_catalog.run(settings, str(listing), str(out))

    assert (result.listed, result.scored, result.failed) == (21, 16, 4)
    assert result.skipped == 1  # copy_of_000.jpg: the same photo, one row
    table = read_parts(out)
    assert table is not None
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}
    assert len(table) == 20 and len({r["image_id"] or r["uri"] for r in rows.values()}) == 20
    assert {name for name, r in rows.items() if r["error"]} == BAD
    assert "not found" in rows["missing.jpg"]["error"] and rows["missing.jpg"]["image_id"] is None
    assert "over the limit" in rows["bomb.png"]["error"]
    assert "truncated" in rows["truncated.jpg"]["error"]

    predictor = RegistryLoader(settings, settings.champion_alias).load()
    good = sorted(n for n in rows if n not in BAD)
    pics = listing.parent / "pics"
    data = [(pics / n).read_bytes() for n in good]
    scores, probs = predictor.predict(np.stack([preprocess_bytes(d, max_pixels=MAX_PIXELS) for d in data]))
    for name, d, score, p in zip(good, data, scores, probs, strict=True):
        row = rows[name]
        assert row["image_id"] == content_id(d) and row["content_hash"].startswith(row["image_id"])
        assert (row["model_name"], row["model_version"]) == ("lightbox", registered_champion.version)
        assert row["score"] == pytest.approx(float(score), abs=1e-5)
        got = dict(row["tag_probs"])
        assert list(got) == list(predictor.tag_names)
        np.testing.assert_allclose([got[t] for t in predictor.tag_names], p, atol=1e-5)

    again = score_catalog.run(settings, str(listing), str(out))  # the bad ones are retried, fail again
    assert (again.scored, again.failed, again.skipped, again.retried) == (0, 4, 17, 4)
    assert len(read_parts(out)) == 20  # type: ignore[arg-type]  # still one row each


def test_a_rerun_retries_the_images_that_failed_once_they_are_fixed(
    registered_champion, tmp_path: Path
) -> None:
    settings = _bulk_settings(registered_champion.settings)
    listing = _catalog(tmp_path / "catalog", n_good=2)
    pics, out = listing.parent / "pics", tmp_path / "scores"
    first = score_catalog.run(settings, str(listing), str(out))
    assert (first.scored, first.failed) == (2, 4)

    restored, replaced = jpeg(photo(50, (96, 64))), jpeg(photo(51, (96, 64)))
    (pics / "missing.jpg").write_bytes(restored)  # put back from a backup
    (pics / "truncated.jpg").write_bytes(replaced)  # copied again, whole this time
    again = score_catalog.run(settings, str(listing), str(out))

    assert (again.scored, again.failed, again.skipped, again.retried) == (2, 2, 3, 4)
    assert "4 retried (failed before)" in again.summary()
    table = read_parts(out)
    assert table is not None
    rows: dict[str, list[dict]] = {}
    for r in table.to_pylist():
        rows.setdefault(r["uri"].rsplit("/", 1)[1], []).append(r)
    # One row per image: the 2 photos (img_000.jpg's copy shares its row), the 2 fixed, the 2 still bad.
    assert len(table) == 6 and len({r["image_id"] or r["uri"] for r in table.to_pylist()}) == 6
    assert all(len(each) == 1 for each in rows.values()), rows  # one row per image, the retry's
    for name, data in (("missing.jpg", restored), ("truncated.jpg", replaced)):
        row = rows[name][0]
        assert row["error"] is None and row["image_id"] == content_id(data) and row["score"] is not None
    assert rows["garbage.jpg"][0]["error"] and rows["bomb.png"][0]["error"]  # still bad: one error row


def test_a_rerun_rescores_a_photo_edited_in_place(registered_champion, tmp_path: Path) -> None:
    """A retouched photo re-exported over its file (same path, new content and mtime): the rerun notices
    by its size and mtime, without reading the others, and its new row replaces the old content's."""
    settings = _bulk_settings(registered_champion.settings)
    pics, out = tmp_path / "pics", tmp_path / "scores"
    pics.mkdir()
    for i in range(3):
        (pics / f"img_{i}.jpg").write_bytes(jpeg(photo(60 + i, (96, 64))))
    first = score_catalog.run(settings, str(pics), str(out))
    assert first.scored == 3

    edited = jpeg(photo(70, (96, 64)))
    (pics / "img_1.jpg").write_bytes(edited)
    stat = (pics / "img_1.jpg").stat()
    os.utime(pics / "img_1.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a second later
    again = score_catalog.run(settings, str(pics), str(out))

    assert (again.scored, again.failed, again.skipped, again.changed) == (1, 0, 2, 1)
    assert "1 changed since scored" in again.summary()
    table = read_parts(out)
    assert table is not None and len(table) == 3
    rows = [r for r in table.to_pylist() if r["uri"].endswith("img_1.jpg")]
    assert len(rows) == 1 and rows[0]["image_id"] == content_id(edited)
    assert rows[0]["content_hash"].startswith(content_id(edited))
    predictor = RegistryLoader(settings, settings.champion_alias).load()
    scores, _ = predictor.predict(preprocess_bytes(edited, max_pixels=MAX_PIXELS)[None])
    assert rows[0]["score"] == pytest.approx(float(scores[0]), abs=1e-5)
    assert all(r["source_version"] for r in table.to_pylist())

    third = score_catalog.run(settings, str(pics), str(out))
    assert (third.scored, third.skipped, third.changed) == (0, 3, 0)


def test_a_killed_job_resumes_with_one_row_per_image(registered_champion, tmp_path: Path) -> None:
    listing = _catalog(tmp_path / "catalog", n_good=30)
    out = tmp_path / "scores"
    base = _bulk_settings(registered_champion.settings)
    env = dict(os.environ) | {
        "PYTHONPATH": str(CODE_ROOT),
        "LIGHTBOX_PROJECT_DIR": str(base.project_dir),
        "LIGHTBOX_RAY_NUM_CPUS": "2",
        "LIGHTBOX_MAX_PIXELS": str(MAX_PIXELS),
        "LIGHTBOX_SCORE_BATCH_SIZE": "1",
        "LIGHTBOX_SCORE_PART_ROWS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cmd = [sys.executable, "-m", "lightbox.cli", "score", str(listing), "--out", str(out)]
    cmd += ["--model", "models:/lightbox@champion"]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not list(out.glob("part-*.parquet")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no part written in 180 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait(30)
    first = read_parts(out)
    assert first is not None and 0 < len(first) < 35, "the job was not killed mid-way"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    table = read_parts(out)
    assert table is not None
    keys = [r["image_id"] or r["uri"] for r in table.to_pylist()]
    assert len(keys) == len(set(keys)) == 34  # 30 photos + 4 bad; the copy shares img_000's row
    assert sorted(r["uri"] for r in first.to_pylist()) == sorted(
        r["uri"] for r in table.to_pylist() if r["uri"] in set(first["uri"].to_pylist())
    )


def test_an_unreadable_file_is_a_row_and_storage_trouble_stops_in_one_error(
    registered_champion, tmp_path: Path
) -> None:
    settings = _bulk_settings(registered_champion.settings, score_read_attempts=1)
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(6):
        (pics / f"img_{i}.jpg").write_bytes(jpeg(photo(i, (96, 64))))
    (pics / "a.jpg").symlink_to("b.jpg")  # a symlink loop: ELOOP, the file's fault, never a retry's
    (pics / "b.jpg").symlink_to("a.jpg")
    out = tmp_path / "scores"

    result = score_catalog.run(settings, str(pics), str(out))
    assert (result.listed, result.scored, result.failed) == (8, 6, 2)
    assert {e.split(":")[0] for _, e in result.errors} == {"unreadable"}
    again = score_catalog.run(settings, str(pics), str(out))
    assert (again.scored, again.failed, again.skipped, again.retried) == (0, 2, 6, 2)

    # Storage failing (EIO) stops the job with StorageUnavailable itself, not Ray's wrapper of it.
    listing = tmp_path / "list.txt"
    listing.write_text("/proc/self/mem\n" + "".join(f"{p}\n" for p in sorted(pics.glob("img_*"))))
    with pytest.raises(StorageUnavailable, match="/proc/self/mem.*Input/output error"):
        score_catalog.run(settings, str(listing), str(tmp_path / "other"))
