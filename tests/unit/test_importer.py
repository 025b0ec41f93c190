"""The import stage on real files: every format into data/, photos as they really come, the bad-input
corpus, re-import and --append, and the user's files left exactly as they were."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from photo_samples import VOCAB, imagefolder, jpeg, photo
from PIL import Image

from lightbox import manifest
from lightbox.label_formats import FormatError
from lightbox.settings import Settings
from pipelines import importer, validate_data
from pipelines.importer import ImportFailed, ImportOptions

pytestmark = pytest.mark.unit


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(project_dir=tmp_path / "project", **overrides)  # type: ignore[arg-type]


OPTS = ImportOptions(score_column="rating", tags_column="labels", score_range="1,10")


def test_imagefolder_import_declares_the_labels_and_sets_a_golden_slice_aside(tmp_path: Path) -> None:
    source = imagefolder(tmp_path / "src", 40)
    before = snapshot(source)
    s = settings_for(tmp_path)
    result = importer.run(s, str(source), OPTS)

    assert snapshot(source) == before  # the user's files: read, never changed
    spec = manifest.read_label_spec(s.data_dir)
    assert spec.tags == VOCAB and spec.score_range == (1.0, 10.0) and spec.score_range_source == "given"
    assert (
        spec.score_name == "rating" and spec.source_format == "imagefolder" and spec.split_policy == "group"
    )
    rows = manifest.read_manifest(s.data_dir)
    golden = manifest.read_manifest(s.golden_dir)
    assert result.n_images == len(rows) and result.n_golden == len(golden) > 0
    assert len(rows) + len(golden) == 40
    assert {r["split"] for r in golden} == {"golden"} and not {r["image_id"] for r in rows} & {
        r["image_id"] for r in golden
    }
    assert manifest.read_label_spec(s.golden_dir).score_range == (1.0, 10.0)
    for r in rows:
        data = (s.data_dir / r["path"]).read_bytes()
        assert r["image_id"] == hashlib.sha256(data).hexdigest()[:16]
        original = (source / r["original"]).read_bytes()
        assert data == original  # a byte-for-byte copy
        assert 1.0 <= float(r["score"]) <= 10.0
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    in_train = {t for r in rows if r["split"] == "train" for t in manifest.cell_to_tags(r["tags"])}
    assert set(VOCAB) <= in_train


def test_reimporting_the_same_folder_changes_nothing(tmp_path: Path) -> None:
    source = imagefolder(tmp_path / "src", 30)
    s = settings_for(tmp_path)
    importer.run(s, str(source), OPTS)
    first = snapshot(s.data_dir), snapshot(s.golden_dir)
    again = importer.run(s, str(source), OPTS)
    assert not again.changed and (snapshot(s.data_dir), snapshot(s.golden_dir)) == first


def test_append_keeps_old_splits_and_adds_only_the_new_images(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    importer.run(s, str(imagefolder(tmp_path / "a", 30)), OPTS)
    old = {r["image_id"]: r["split"] for r in manifest.read_manifest(s.data_dir)}
    batch = imagefolder(tmp_path / "b", 8, start=100)
    result = importer.run(s, str(batch), ImportOptions(**{**OPTS.__dict__, "append": True}))
    rows = {r["image_id"]: r for r in manifest.read_manifest(s.data_dir)}
    assert result.n_new == 8 and len(rows) == 38
    assert all(rows[i]["split"] == split for i, split in old.items())
    assert manifest.read_label_spec(s.data_dir).source == str(tmp_path / "a")  # the dataset's origin


def test_photos_as_they_really_come(tmp_path: Path) -> None:
    """EXIF orientation, CMYK, 16-bit, palette, alpha, animation and every accepted format import."""
    src = tmp_path / "src"
    (src / "pics").mkdir(parents=True)
    files: dict[str, bytes] = {}
    portrait = photo(1, (120, 80))
    exif = portrait.getexif()
    exif[0x0112] = 6  # stored sideways, shown upright
    files["rotated.jpg"] = jpeg(portrait, exif=exif)
    for name, img, fmt in [
        ("cmyk.tif", photo(2).convert("CMYK"), "TIFF"),
        ("grey16.png", Image.fromarray(np.asarray(photo(3).convert("L"), np.uint16) * 257), "PNG"),
        ("palette.gif", photo(4).convert("P"), "GIF"),
        ("alpha.png", photo(5).convert("RGBA"), "PNG"),
        ("pic.webp", photo(6), "WEBP"),
        ("pic.bmp", photo(7), "BMP"),
        ("IMG_0001.HEIC", portrait, "HEIF"),  # a phone's photo, stored sideways as well
        ("pic.avif", photo(10), "AVIF"),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **({"exif": exif.tobytes()} if fmt == "HEIF" else {}))
        files[name] = buf.getvalue()
    buf = io.BytesIO()
    photo(8).save(buf, "GIF", save_all=True, append_images=[photo(9)], duration=100, loop=0)
    files["animated.gif"] = buf.getvalue()
    rows = []
    for name, data in files.items():
        (src / "pics" / name).write_bytes(data)
        rows.append(f"pics/{name},0.5,x")
    (src / "metadata.csv").write_text("file_name,score,tags\n" + "\n".join(rows) + "\n")
    s = settings_for(tmp_path, golden_fraction=0.0, min_image_side=8)
    result = importer.run(s, str(src))
    assert result.n_quarantined == 0 and result.n_images == len(files)
    by_name = {Path(r["original"]).name: r for r in manifest.read_manifest(s.data_dir)}
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == ("80", "120")
    assert (by_name["IMG_0001.HEIC"]["width"], by_name["IMG_0001.HEIC"]["height"]) == ("80", "120")
    heic, avif = by_name["IMG_0001.HEIC"]["path"], by_name["pic.avif"]["path"]
    assert heic.endswith(".heic") and avif.endswith(".avif")
    checked = validate_data.run(s)  # the data validation takes every format the import takes
    assert checked.passed and checked.quarantined == [], [c for c in checked.checks if not c.success]
    assert by_name["cmyk.tif"]["path"].endswith(".tif") and by_name["pic.webp"]["path"].endswith(".webp")


def _bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header claiming w x h pixels, with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


def _bad_corpus(src: Path) -> dict[str, str]:
    """Good photos plus one of each defect; returns file name -> the reason the report must give."""
    (src / "pics").mkdir(parents=True)
    lines = ["file_name,score,tags,camera"]
    for i in range(30):
        (src / "pics" / f"ok{i}.jpg").write_bytes(jpeg(photo(100 + i)))
        lines.append(f"pics/ok{i}.jpg,{i % 5 + 1},{VOCAB[i % 3]},x100")
    bad = {
        "truncated (1).jpg": (jpeg(photo(1, (400, 300)))[:700], "corrupt or truncated"),
        "empty.jpg": (b"", "empty file"),
        "notes.jpg": (b"this is a text file", "not an image"),
        "tiny.png": (None, "under the minimum side"),
        "bomb.png": (_bomb_png(20_000, 15_000), "over"),
        "outside.jpg": (jpeg(photo(2)), "outside the range 1..5"),
    }
    buf = io.BytesIO()
    photo(3, (8, 8)).save(buf, "PNG")
    bad["tiny.png"] = (buf.getvalue(), bad["tiny.png"][1])
    for name, (data, _) in bad.items():
        (src / "pics" / name).write_bytes(data)
        lines.append(f"pics/{name},{9 if name == 'outside.jpg' else 3},wren,x100")
    lines.append("pics/missing.jpg,3,wren,x100")
    (src / "metadata.csv").write_text("\n".join(lines) + "\n")
    return {f"pics/{k}": v[1] for k, v in bad.items()} | {"pics/missing.jpg": "file is missing"}


def test_bad_input_is_reported_by_name_and_quarantined_and_the_good_images_import(tmp_path: Path) -> None:
    src = tmp_path / "src"
    expected = _bad_corpus(src)
    before = snapshot(src)
    s = settings_for(tmp_path, max_quarantine_fraction=0.3, golden_fraction=0.0)
    result = importer.run(s, str(src), ImportOptions(score_range="1,5"))
    assert snapshot(src) == before
    assert result.n_images == 30 and result.n_quarantined == len(expected)
    report = json.loads((s.reports_dir / "import.json").read_text())
    reasons = {p["origin"]: p["reason"] for p in report["problems"]}
    for origin, reason in expected.items():
        assert reason in reasons[origin], (origin, reasons[origin])
    assert "columns not used (unknown): camera" in report["notes"]
    quarantined = next(s.quarantine_dir.iterdir())
    copies = {p.name for p in quarantined.iterdir()}
    assert any(n.endswith("truncated (1).jpg") for n in copies) and "quarantined.csv" in copies
    assert any(n.endswith("outside.jpg") for n in copies)  # refused after decoding, for its score
    assert str(src / "pics" / "missing.jpg") in reasons["pics/missing.jpg"]  # where it was looked for
    assert "pics/notes.jpg" in (s.reports_dir / "import.md").read_text()


def test_too_many_bad_images_refuse_the_import_and_leave_data_unchanged(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    importer.run(s, str(imagefolder(tmp_path / "good", 20)), OPTS)
    before = snapshot(s.data_dir)
    src = tmp_path / "bad"
    _bad_corpus(src)
    with pytest.raises(ImportFailed, match=r"data/ is unchanged.*import\.md"):
        importer.run(s, str(src), ImportOptions(score_range="1,5"))
    assert snapshot(s.data_dir) == before
    assert not [p for p in s.project_dir.iterdir() if p.name.startswith(".data.building-")]


def test_near_and_exact_duplicates_share_a_group_and_a_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    lines = ["file_name,score"]
    for i in range(24):
        (src / "a" / f"{i}.jpg").write_bytes(jpeg(photo(200 + i, (160, 120))))
        lines.append(f"a/{i}.jpg,{i}")
    # The same photo resized and re-encoded (a near duplicate), and byte-identical under a second name.
    base = photo(200, (160, 120))
    (src / "a" / "resized.png").write_bytes(_png(base.resize((120, 90))))
    (src / "a" / "copy.jpg").write_bytes((src / "a" / "0.jpg").read_bytes())
    lines += ["a/resized.png,1", "a/copy.jpg,2"]
    (src / "metadata.csv").write_text("\n".join(lines) + "\n")
    s = settings_for(tmp_path, golden_fraction=0.0)
    result = importer.run(s, str(src))
    rows = {r["original"]: r for r in manifest.read_manifest(s.data_dir)}
    assert result.exact_duplicates == 1 and "a/copy.jpg" not in rows and len(rows) == 25
    assert float(rows["a/0.jpg"]["score"]) == 1.0  # the mean of the two labels of one photo
    assert rows["a/resized.png"]["group"] == rows["a/0.jpg"]["group"]
    assert rows["a/resized.png"]["split"] == rows["a/0.jpg"]["split"]
    assert result.near_duplicate_groups >= 1
    assert manifest.read_label_spec(s.data_dir).score_range == (1.0, 23.0)  # observed (0 and 2 merged to 1)
    assert any("observed min and max" in n for n in result.notes)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_classfolders_same_picture_in_two_folders_gets_both_tags(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(12):
        tag = ("sunset", "beach")[i % 2]
        (src / tag).mkdir(parents=True, exist_ok=True)
        (src / tag / f"{i}.jpg").write_bytes(jpeg(photo(300 + i)))
    (src / "sunset" / "both.jpg").write_bytes((src / "beach" / "1.jpg").read_bytes())
    s = settings_for(tmp_path, golden_fraction=0.0)
    result = importer.run(s, str(src))
    assert result.format == "classfolders" and result.score_name is None and result.score_range is None
    tags = [r["tags"] for r in manifest.read_manifest(s.data_dir)]
    assert "beach|sunset" in tags and len(tags) == 12
    assert not any("several names" in n for n in result.notes)  # a folder per tag: no conflict


def test_class_folders_linked_in_from_elsewhere_are_imported_and_a_loop_is_not(tmp_path: Path) -> None:
    src, elsewhere = tmp_path / "src", tmp_path / "other_disk"
    for i in range(12):
        folder = (src / "sunset") if i % 2 == 0 else (elsewhere / "beach")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(jpeg(photo(300 + i)))
    (src / "beach").symlink_to(elsewhere / "beach")
    (src / "sunset" / "loop").symlink_to(src)
    s = settings_for(tmp_path, golden_fraction=0.0)
    result = importer.run(s, str(src))
    assert result.format == "classfolders"
    assert sorted(r["tags"] for r in manifest.read_manifest(s.data_dir)) == ["beach"] * 6 + ["sunset"] * 6


def test_labelstudio_export_with_local_files(tmp_path: Path) -> None:
    photos_root = tmp_path / "ls-files"
    (photos_root / "shoot").mkdir(parents=True)
    tasks = []
    for i in range(16):
        (photos_root / "shoot" / f"{i}.jpg").write_bytes(jpeg(photo(400 + i)))
        result = [
            {"from_name": "stars", "to_name": "img", "type": "rating", "value": {"rating": 1 + i % 5}},
            {"from_name": "what", "to_name": "img", "type": "choices", "value": {"choices": [VOCAB[i % 3]]}},
        ]
        tasks.append(
            {
                "id": i,
                "data": {"img": f"/data/local-files/?d=shoot/{i}.jpg"},
                "annotations": [{"result": result}],
            }
        )
    export = tmp_path / "exports" / "project-3.json"
    export.parent.mkdir()
    export.write_text(json.dumps(tasks))
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=3)
    result = importer.run(s, str(export), ImportOptions(local_files_root=str(photos_root), score_range="1,5"))
    assert result.format == "labelstudio" and result.n_images == 16 and result.score_name == "stars"
    assert result.tags == list(VOCAB)


def test_a_killed_import_leaves_nothing_the_next_run_trips_over(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    s.project_dir.mkdir(parents=True)
    stale = s.project_dir / ".data.building-999999999-abc"
    (stale / "images").mkdir(parents=True)
    importer.run(s, str(imagefolder(tmp_path / "src", 20)), OPTS)
    assert not stale.exists()


def test_no_labels_at_all_is_one_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg(photo(1)))
    (src / "metadata.csv").write_text("file_name\na.jpg\n")
    with pytest.raises(ImportFailed, match="no score and no tags column"):
        importer.run(settings_for(tmp_path), str(src))


def test_names_written_on_another_system_still_find_their_photos(tmp_path: Path) -> None:
    """A spreadsheet typed on Windows or Linux, photos copied from a Mac: the names differ in case,
    slashes and accent encoding; each photo is found (when only one matches) and the rest is said."""
    import unicodedata

    src = tmp_path / "src"
    (src / "Shoot").mkdir(parents=True)
    names = [f"Café {i}.JPG" for i in range(12)]
    for i, name in enumerate(names):
        (src / "Shoot" / unicodedata.normalize("NFD", name)).write_bytes(jpeg(photo(300 + i)))
    (src / "Shoot" / "forgotten.jpg").write_bytes(jpeg(photo(399)))
    rows = [
        f"shoot\\{unicodedata.normalize('NFC', n).lower()},{i % 5 + 1},{VOCAB[i % 2]}"
        for i, n in enumerate(names)
    ]
    (src / "metadata.csv").write_text("file_name,score,tags\n" + "\n".join(rows) + "\n", encoding="utf-8")
    s = settings_for(tmp_path, golden_fraction=0.0)
    result = importer.run(s, str(src), ImportOptions())
    assert result.n_images == 12 and result.n_quarantined == 0
    notes = " / ".join(result.notes)
    assert "12 file names matched the disk's only when case or accents were ignored" in notes
    assert "1 images in the source are in no labels file and were left out: Shoot/forgotten.jpg" in notes


def test_label_studio_csv_export_as_source_and_class_folders_split_train_test(tmp_path: Path) -> None:
    """Label Studio's CSV export given as SOURCE reads like its JSON_MIN; class folders under train/ and
    test/ (no validation, as many datasets ship) get a validation split carved from train by group."""
    media = tmp_path / "media" / "upload" / "1"
    media.mkdir(parents=True)
    lines = [
        '"image","id","quality","tags","annotator","annotation_id","created_at","updated_at","lead_time"'
    ]
    for i in range(12):
        (media / f"p{i}.jpg").write_bytes(jpeg(photo(500 + i)))
        tags = VOCAB[i % 3] if i % 2 else f'{{""choices"": [""{VOCAB[i % 3]}"", ""{VOCAB[(i + 1) % 3]}""]}}'
        lines.append(
            f'"/data/upload/1/p{i}.jpg",{i},"[{{""rating"": {1 + i % 5}}}]","{tags}","a@x",{i},"t","t",1.0'
        )
    export = tmp_path / "project-1-at-2026.csv"
    export.write_text("\n".join(lines) + "\n")
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=2)
    result = importer.run(s, str(export), ImportOptions(media_root=str(tmp_path / "media")))
    assert result.format == "labelstudio" and result.n_images == 12 and result.score_name == "quality"
    assert result.score_range == [1.0, 5.0] and result.tags == list(VOCAB)

    src = tmp_path / "folders"
    for i in range(24):
        split, tag = ("train", "test")[i % 4 == 0], VOCAB[i % 2]
        (src / split / tag).mkdir(parents=True, exist_ok=True)
        (src / split / tag / f"{i}.jpg").write_bytes(jpeg(photo(600 + i)))
    s = settings_for(tmp_path / "second", golden_fraction=0.0)
    result = importer.run(s, str(src), ImportOptions())
    assert result.splits["test"] == 6 and result.splits["validation"] > 0
    assert result.splits["train"] + result.splits["validation"] == 18
    assert any(n.startswith("no validation split was given") for n in result.notes)
    rows = manifest.read_manifest(s.data_dir)
    assert {r["split"] for r in rows if r["original"].startswith("test/")} == {"test"}  # the user's stay


def test_a_wrong_golden_source_changes_nothing_and_a_changed_dataset_needs_a_new_version(
    tmp_path: Path,
) -> None:
    from lightbox.adapters import dvc_repo

    s = settings_for(tmp_path, golden_fraction=0.0)
    importer.run(s, str(imagefolder(tmp_path / "a", 20)), OPTS)
    dvc_repo.save_version(s, dvc_repo.DatasetVersion("abc.dir", "f" * 40, "data", 22, 1, "remote"))
    before = snapshot(s.data_dir)
    with pytest.raises(ImportFailed, match="--golden .*nope.*data/ is unchanged"):
        importer.run(
            s,
            str(imagefolder(tmp_path / "b", 20, start=50)),
            dataclasses.replace(OPTS, golden=str(tmp_path / "nope")),
        )
    assert snapshot(s.data_dir) == before and dvc_repo.load_version(s).md5 == "abc.dir"
    importer.run(s, str(imagefolder(tmp_path / "a", 20)), OPTS)  # the same data again: still that version
    assert dvc_repo.load_version(s).md5 == "abc.dir"
    importer.run(s, str(imagefolder(tmp_path / "b", 20, start=50)), OPTS)  # other photos: data/ changed
    with pytest.raises(dvc_repo.NoDatasetVersion, match="changed since it was last versioned"):
        dvc_repo.load_version(s)


def test_another_datasets_golden_set_is_replaced_by_a_slice_of_this_one(tmp_path: Path) -> None:
    """`make demo`, then your photos: the gates must judge your models on your labels, not the demo's."""
    s = settings_for(tmp_path)
    importer.run(s, str(imagefolder(tmp_path / "first", 40)), OPTS)
    first_golden = {r["image_id"] for r in manifest.read_manifest(s.golden_dir)}
    second = imagefolder(tmp_path / "second", 40, start=100)
    result = importer.run(s, str(second), OPTS)
    golden = manifest.read_manifest(s.golden_dir)
    assert golden and not {r["image_id"] for r in golden} & first_golden
    assert manifest.read_label_spec(s.golden_dir).source == str(second)
    assert any(n.startswith(f"the golden set was {tmp_path / 'first'}'s") for n in result.notes)
    again = importer.run(s, str(second), OPTS)  # the same dataset again: its golden set stays
    assert {r["image_id"] for r in manifest.read_manifest(s.golden_dir)} == {r["image_id"] for r in golden}
    assert not any("golden set was" in n for n in again.notes)
    # A dataset imported while another's golden set was in place (and no slice could be taken) gets
    # its own when imported again.
    third = imagefolder(tmp_path / "third", 40, start=200)
    kept = importer.run(settings_for(tmp_path, golden_fraction=0.0), str(third), OPTS)
    assert any("not this dataset's: give yours with --golden" in n for n in kept.notes)
    assert manifest.read_label_spec(s.golden_dir).source == str(second)
    importer.run(s, str(third), OPTS)
    assert manifest.read_label_spec(s.golden_dir).source == str(third)
    rows, golden = manifest.read_manifest(s.data_dir), manifest.read_manifest(s.golden_dir)
    assert (
        golden
        and len(rows) + len(golden) == 40
        and not {r["image_id"] for r in rows} & {r["image_id"] for r in golden}
    )


def test_a_kaggle_table_given_as_source_names_photos_by_id(tmp_path: Path) -> None:
    """``labels.csv`` beside its photos' folder, naming each photo by its id (no extension) with one 0/1
    column per tag: each photo is found, and a photo in that folder that no row names is said."""
    src = tmp_path / "kaggle"
    (src / "images").mkdir(parents=True)
    for i in range(12):
        (src / "images" / f"{1000 + i}.jpg").write_bytes(jpeg(photo(500 + i)))
    (src / "images" / "1099.jpg").write_bytes(jpeg(photo(599)))
    rows = [f"images/{1000 + i},{i % 2},{1 - i % 2}" for i in range(12)]
    (src / "labels.csv").write_text("image_id,Vivid,Dull\n" + "\n".join(rows) + "\n", encoding="utf-8")
    s = settings_for(tmp_path, golden_fraction=0.0)
    result = importer.run(s, str(src / "labels.csv"), ImportOptions())
    assert result.n_images == 12 and result.n_quarantined == 0
    assert manifest.read_label_spec(s.data_dir).tags == ("Dull", "Vivid")
    notes = " / ".join(result.notes)
    assert "12 names without an extension matched the one image of that name" in notes
    assert "1 images in the source are in no labels file and were left out: images/1099.jpg" in notes


def test_a_table_beside_its_photos_folder_as_koniq_ships(tmp_path: Path) -> None:
    """KonIQ-10k: the scores table beside ``1024x768/``, naming each photo without its folder; the
    photos are found there. A file whose rows all fail the same way says why in the error's line, and
    an import that leaves nothing to train on is refused, data/ unchanged."""
    src = tmp_path / "koniq"
    (src / "1024x768").mkdir(parents=True)
    for i in range(12):
        (src / "1024x768" / f"{826373 + i}.jpg").write_bytes(jpeg(photo(700 + i)))
    rows = [f"{826373 + i}.jpg,{1 + (i * 7) % 40 / 10:.2f}" for i in range(12)]
    table = src / "koniq10k_scores_and_distributions.csv"
    table.write_text("image_name,MOS\n" + "\n".join(rows) + "\n", encoding="utf-8")
    s = settings_for(tmp_path, golden_fraction=0.0)
    result = importer.run(s, str(table), ImportOptions(score_column="MOS"))
    assert result.n_images == 12 and result.n_quarantined == 0 and result.score_name == "MOS"
    assert (
        "12 names were found in another folder, the only image of that name: 1024x768/ (12)" in result.notes
    )
    before = snapshot(s.data_dir)

    percent = src / "percent.csv"
    percent.write_text("image_name,MOS\n" + "\n".join(f"{826373 + i}.jpg,high" for i in range(12)) + "\n")
    with pytest.raises(ImportFailed, match=r"12 of them: score 'high' is not a number; data/ is unchanged"):
        importer.run(s, str(percent), ImportOptions(score_column="MOS"))
    rare = src / "rare.csv"
    rare.write_text("image_name,tags\n" + "\n".join(f"{826373 + i}.jpg,tag{i}" for i in range(12)) + "\n")
    with pytest.raises(
        ImportFailed, match="nothing to train on: no score, and no tag is on 5 images or more"
    ):
        importer.run(s, str(rare), ImportOptions())
    assert snapshot(s.data_dir) == before


def test_a_cvat_export_with_images_imports_its_image_tags(tmp_path: Path) -> None:
    """CVAT's "CVAT for images 1.1" export: annotations.xml beside images/. Image-level tags are the
    labels, a named tag attribute the score; boxes are said in the report, never taken as tags."""
    src = tmp_path / "cvat"
    (src / "images" / "day1").mkdir(parents=True)
    images = []
    for i in range(12):
        (src / "images" / "day1" / f"{i}.jpg").write_bytes(jpeg(photo(800 + i)))
        box = '<box label="beak" source="manual" xtl="1" ytl="1" xbr="9" ybr="9"/>' if i % 3 == 0 else ""
        stars = f'<attribute name="stars">{1 + i % 5}</attribute>'
        tag = f'<tag label="{VOCAB[i % 3]}" source="manual">{stars}</tag>'
        images.append(f'<image id="{i}" name="day1/{i}.jpg" width="96" height="64">{tag}{box}</image>')
    xml = '<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>' + "".join(images)
    (src / "annotations.xml").write_text(xml + "</annotations>\n", encoding="utf-8")
    before = snapshot(src)
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=3)
    result = importer.run(s, str(src), ImportOptions(score_column="stars", score_range="1,5"))
    assert snapshot(src) == before
    assert result.format == "cvat" and result.n_images == 12 and result.n_quarantined == 0
    assert result.tags == list(VOCAB) and result.score_name == "stars" and result.score_range == [1.0, 5.0]
    rows = {r["original"]: r for r in manifest.read_manifest(s.data_dir)}
    assert rows["day1/4.jpg"]["tags"] == VOCAB[1] and float(rows["day1/4.jpg"]["score"]) == 5.0
    report = (s.reports_dir / "import.md").read_text()
    assert "(cvat)" in report and "4 object annotations (box 4) not read" in report
    # The XML given as SOURCE finds the same photos.
    again = importer.run(
        settings_for(tmp_path / "b", golden_fraction=0.0, min_tag_count=3), str(src / "annotations.xml")
    )
    assert again.format == "cvat" and again.n_images == 12 and again.score_name is None


def test_a_fiftyone_classification_export_per_split_imports_with_its_splits(tmp_path: Path) -> None:
    """FiftyOneImageClassificationDataset exported per split: train/ and test/, each a labels.json with
    class indices and data/<uuid>.<ext>; an unlabelled photo (null) is left out and counted."""
    src = tmp_path / "fo"
    for split, seeds in (("train", range(12)), ("test", range(12, 16))):
        (src / split / "data").mkdir(parents=True)
        labels: dict[str, int | None] = {}
        for i in seeds:
            uuid = f"{i:04x}c0ffee"
            (src / split / "data" / f"{uuid}.jpg").write_bytes(jpeg(photo(900 + i)))
            labels[uuid] = i % 3
        (src / split / "data" / "ffffffff.jpg").write_bytes(jpeg(photo(999)))
        labels["ffffffff"] = None
        doc = {"classes": list(VOCAB), "labels": labels}
        (src / split / "labels.json").write_text(json.dumps(doc), encoding="utf-8")
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=1)
    result = importer.run(s, str(src))
    assert result.format == "fiftyone" and result.n_images == 16 and result.n_quarantined == 0
    assert result.tags == list(VOCAB) and result.splits["test"] == 4
    assert "2 photos have no label (null: not labelled yet), left out" in result.notes
    assert not any("in no labels file" in n for n in result.notes)
    rows = {r["original"]: r for r in manifest.read_manifest(s.data_dir)}
    assert rows["train/data/0004c0ffee.jpg"]["tags"] == VOCAB[1]


def test_celeba_and_ava_folders_as_they_ship(tmp_path: Path) -> None:
    """CelebA: Anno/list_attr_celeba.txt, Eval/list_eval_partition.txt and Img/img_align_celeba/; AVA:
    AVA_dataset/AVA.txt beside images/. Both are told by their content, their photos found by name."""
    celeba = tmp_path / "celeba"
    for folder in ("Anno", "Eval", "Img/img_align_celeba"):
        (celeba / folder).mkdir(parents=True)
    attrs, parts = ["12", "Eyeglasses Smiling Wavy_Hair"], []
    for i in range(1, 13):
        (celeba / "Img" / "img_align_celeba" / f"{i:06d}.jpg").write_bytes(jpeg(photo(1000 + i)))
        attrs.append(f"{i:06d}.jpg {' '.join(('1' if (i + k) % 3 == 0 else '-1') for k in range(3))}")
        parts.append(f"{i:06d}.jpg {0 if i <= 8 else 1 if i <= 10 else 2}")
    (celeba / "Anno" / "list_attr_celeba.txt").write_text("\n".join(attrs) + "\n")
    (celeba / "Eval" / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    s = settings_for(tmp_path / "c", golden_fraction=0.0, min_tag_count=2)
    result = importer.run(s, str(celeba))
    assert result.format == "celeba" and result.n_images == 12 and result.n_quarantined == 0
    assert result.tags == ["Eyeglasses", "Smiling", "Wavy_Hair"] and result.score_name is None
    assert result.splits == {"train": 8, "validation": 2, "test": 2}
    rows = {Path(r["original"]).name: r for r in manifest.read_manifest(s.data_dir)}
    assert rows["000003.jpg"]["tags"] == "Eyeglasses" and rows["000001.jpg"]["tags"] == "Wavy_Hair"
    # The list itself as SOURCE: its folder (Anno/) holds no photo, and the message names the way out.
    with pytest.raises(FormatError, match="no photo below the folder of .*give the dataset's folder"):
        importer.run(settings_for(tmp_path / "c2"), str(celeba / "Anno" / "list_attr_celeba.txt"))

    ava = tmp_path / "ava"
    (ava / "AVA_dataset").mkdir(parents=True)
    (ava / "images").mkdir()
    lines = []
    for i in range(12):
        (ava / "images" / f"{9000 + i}.jpg").write_bytes(jpeg(photo(1100 + i)))
        votes = [0] * 10
        votes[i % 10] = 4  # every vote on one score: the mean is that score
        lines.append(f"{i + 1} {9000 + i} {' '.join(map(str, votes))} 0 0 1396")
    (ava / "images" / "9100.jpg").write_bytes(jpeg(photo(1190)))  # a photo nobody voted on
    lines.append(f"13 9100 {' '.join(['0'] * 10)} 0 0 1396")
    (ava / "AVA_dataset" / "AVA.txt").write_text("\n".join(lines) + "\n")
    s = settings_for(tmp_path / "a", golden_fraction=0.0, max_quarantine_fraction=0.2)
    result = importer.run(s, str(ava))
    assert result.format == "ava" and result.n_images == 12 and result.n_quarantined == 1
    copies = [p.name for p in next(s.quarantine_dir.iterdir()).iterdir() if p.suffix == ".jpg"]
    assert len(copies) == 1 and copies[0].endswith("9100.jpg")  # its photo, found in images/
    assert not [n for n in result.notes if "in no labels file" in n]
    assert result.score_name == "mean_vote" and result.score_range == [1.0, 10.0] and result.tags == []
    rows = {Path(r["original"]).name: r for r in manifest.read_manifest(s.data_dir)}
    assert float(rows["9003.jpg"]["score"]) == 4.0 and float(rows["9011.jpg"]["score"]) == 2.0
    assert manifest.read_label_spec(s.data_dir).score_range_source == "given"


def test_an_excel_labels_file_given_as_source(tmp_path: Path) -> None:
    import openpyxl

    src = tmp_path / "shoot"
    (src / "photos").mkdir(parents=True)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["file", "stars", "tags"])
    for i in range(12):
        (src / "photos" / f"DSC{i:04d}.JPG").write_bytes(jpeg(photo(1200 + i)))
        sheet.append([f"photos/DSC{i:04d}.JPG", 1 + i % 5, VOCAB[i % 3]])
    book.save(src / "labels.xlsx")
    before = snapshot(src)
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=3)
    result = importer.run(s, str(src / "labels.xlsx"), ImportOptions(score_range="1,5"))
    assert snapshot(src) == before
    assert result.format == "imagefolder" and result.n_images == 12 and result.n_quarantined == 0
    assert result.score_name == "stars" and result.tags == list(VOCAB)


def test_hugging_face_parquet_shards_with_embedded_images(tmp_path: Path) -> None:
    """A Hugging Face dataset's parquet shards (images embedded as bytes, labels as ClassLabel indices
    named in the schema metadata): every image is checked from its bytes, a bad one quarantined with
    its bytes like a bad file, and nothing of this import's own is left behind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "hf"
    (src / "data").mkdir(parents=True)
    (src / "README.md").write_text("---\ndataset_info: ...\n---\n")
    features = {"image": {"_type": "Image"}, "label": {"names": list(VOCAB), "_type": "ClassLabel"}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    for split, seeds in (("train", range(14)), ("test", range(14, 18))):
        images = [{"bytes": jpeg(photo(1300 + i)), "path": f"{i}.jpg"} for i in seeds]
        labels = [i % 3 for i in seeds]
        if split == "train":
            images[0] = {"bytes": b"GIF89a broken", "path": "broken.gif"}
            labels[1] = -1  # no label
        table = pa.table({"image": images, "label": labels}).replace_schema_metadata(metadata)
        pq.write_table(table, src / "data" / f"{split}-00000-of-00001.parquet")
    before = snapshot(src)
    s = settings_for(tmp_path, golden_fraction=0.0, max_quarantine_fraction=0.2, min_tag_count=3)
    result = importer.run(s, str(src))
    assert snapshot(src) == before
    assert result.format == "parquet" and result.n_images == 16 and result.n_quarantined == 1
    assert result.tags == list(VOCAB) and result.splits["test"] == 4
    assert "1 rows have no label (a ClassLabel's -1, or nothing), left out" in result.notes
    report = json.loads((s.reports_dir / "import.json").read_text())
    assert [p["origin"] for p in report["problems"]] == [
        "data/train-00000-of-00001.parquet row 0 (broken.gif)"
    ]
    assert "not an image" in report["problems"][0]["reason"]
    quarantined = next(s.quarantine_dir.iterdir())
    copies = [p for p in quarantined.iterdir() if p.name != "quarantined.csv"]
    assert [p.read_bytes() for p in copies] == [b"GIF89a broken"] and copies[0].name.endswith("broken.gif")
    rows = {r["original"]: r for r in manifest.read_manifest(s.data_dir)}
    assert rows["data/test-00000-of-00001.parquet row 1 (15.jpg)"]["tags"] == VOCAB[0]
    assert not [p for p in s.project_dir.iterdir() if ".building-" in p.name]


def _hf_shard(path: Path, seeds: range, labels: list[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {"image": {"_type": "Image"}, "label": {"names": list(VOCAB), "_type": "ClassLabel"}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    images = [{"bytes": jpeg(photo(i)), "path": None} for i in seeds]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": images, "label": labels}).replace_schema_metadata(metadata), path)


def test_hub_converter_shards_named_alike_keep_their_own_photos_and_splits(tmp_path: Path) -> None:
    """The Hub's parquet converter names every split's shard 0000.parquet, a large dataset's first ones
    under partial-<split>/: each row keeps its own photo and label, and the folder names the split."""
    src = tmp_path / "hub"
    _hf_shard(src / "default" / "train" / "0000.parquet", range(1400, 1412), [i % 3 for i in range(12)])
    _hf_shard(src / "default" / "partial-test" / "0000.parquet", range(1420, 1426), [2] * 6)
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=2)
    result = importer.run(s, str(src))
    assert result.n_images == 18 and result.splits["test"] == 6
    rows = manifest.read_manifest(s.data_dir)
    assert all("|" not in r["tags"] for r in rows)  # one label each: no photo took another's
    tests = [r for r in rows if r["split"] == "test"]
    assert len(tests) == 6 and {r["tags"] for r in tests} == {VOCAB[2]}


def test_a_test_shard_alone_is_nothing_to_train_on(tmp_path: Path) -> None:
    src = tmp_path / "only-test"
    _hf_shard(src / "test-00000-of-00001.parquet", range(1440, 1450), [i % 3 for i in range(10)])
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=2)
    with pytest.raises(ImportFailed, match=r"nothing to train on: .*\(test 10\); import its train split too"):
        importer.run(s, str(src))
    assert not s.data_dir.exists()


def test_a_damaged_parquet_page_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "damaged"
    shard = src / "train-00000-of-00001.parquet"
    _hf_shard(shard, range(1460, 1470), [i % 3 for i in range(10)])
    data = bytearray(shard.read_bytes())
    data[4:260] = b"\xff" * 256  # the first page's header and data, the footer intact
    shard.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"train-00000-of-00001.parquet is damaged: [^\n]*export it again"):
        importer.run(settings_for(tmp_path), str(src))


def test_a_cvat_project_export_finds_photos_in_their_subset_folders(tmp_path: Path) -> None:
    """CVAT's project export puts each subset's photos in images/<subset>/, where two subsets may hold
    the same name; the refusal of a source whose photos are all missing says so once, counted."""
    src = tmp_path / "project"
    images = []
    for subset, seeds in (("Train", range(1480, 1492)), ("Test", range(1500, 1504))):
        for i, seed in enumerate(seeds):
            (src / "images" / subset).mkdir(parents=True, exist_ok=True)
            (src / "images" / subset / f"IMG_{i:04d}.jpg").write_bytes(jpeg(photo(seed)))
            tag = f'<tag label="{VOCAB[seed % 3]}" source="manual"/>'
            images.append(f'<image id="{len(images)}" name="IMG_{i:04d}.jpg" subset="{subset}">{tag}</image>')
    xml = '<?xml version="1.0"?><annotations><version>1.1</version>' + "".join(images) + "</annotations>"
    (src / "annotations.xml").write_text(xml, encoding="utf-8")
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=2)
    result = importer.run(s, str(src))
    assert result.format == "cvat" and result.n_images == 16 and result.n_quarantined == 0
    assert result.splits["test"] == 4
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "annotations.xml").write_text(xml, encoding="utf-8")
    with pytest.raises(ImportFailed, match="16 of 16 .*, 16 of them: file is missing"):
        importer.run(settings_for(tmp_path / "b"), str(gone))


def test_several_cvat_jobs_import_one_then_the_others_appended(tmp_path: Path) -> None:
    src = tmp_path / "jobs"
    for job, seeds in (("job_12", range(1520, 1532)), ("job_13", range(1540, 1546))):
        (src / job / "images").mkdir(parents=True)
        images = []
        for i, seed in enumerate(seeds):
            (src / job / "images" / f"{job}_{i}.jpg").write_bytes(jpeg(photo(seed)))
            tag = f'<tag label="{VOCAB[seed % 3]}" source="manual"/>'
            images.append(f'<image id="{i}" name="{job}_{i}.jpg">{tag}</image>')
        xml = "<annotations><version>1.1</version>" + "".join(images) + "</annotations>"
        (src / job / "annotations.xml").write_text(xml, encoding="utf-8")
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=2)
    with pytest.raises(
        FormatError,
        match=r"found 2 .*give the file itself as SOURCE \(the first\), then each other with --append",
    ):
        importer.run(s, str(src))
    assert importer.run(s, str(src / "job_12" / "annotations.xml")).n_images == 12
    both = importer.run(s, str(src / "job_13" / "annotations.xml"), ImportOptions(append=True))
    assert both.n_images == 18


def test_a_git_lfs_pointer_where_a_shard_belongs_says_to_pull(tmp_path: Path) -> None:
    src = tmp_path / "clone" / "data"
    src.mkdir(parents=True)
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 123456\n"
    (src / "train-00000-of-00001.parquet").write_text(pointer)
    with pytest.raises(FormatError, match="is a Git LFS pointer, not the parquet: run `git lfs pull`"):
        importer.run(settings_for(tmp_path), str(src.parent))


def test_cloud_labelling_exports_find_their_photos_by_bucket_key(tmp_path: Path) -> None:
    """A Ground Truth job's output.manifest beside its bucket synced to a folder (the keys below the
    prefix; IMG_0001.jpg in every day's folder), and a Vertex AI export with one photo not copied."""
    src = tmp_path / "gt"
    rows = []
    for i in range(12):
        day = f"day{i % 2 + 1}"
        name = f"IMG_{i // 2:04d}.jpg"
        (src / day).mkdir(parents=True, exist_ok=True)
        (src / day / name).write_bytes(jpeg(photo(1300 + i)))
        job = {"0": VOCAB[i % 3], "1": VOCAB[(i + 1) % 3]}
        rows.append(
            {
                "source-ref": f"s3://acme-photos/shoot/2026/{day}/{name}",
                "scenes": [0, 1] if i % 4 == 0 else [0],
                "scenes-metadata": {
                    "class-map": {k: v for k, v in job.items() if i % 4 == 0 or k == "0"},
                    "type": "groundtruth/image-classification-multilabel",
                    "job-name": "labeling-job/scenes",
                    "human-annotated": "yes",
                },
            }
        )
    (src / "output.manifest").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    before = snapshot(src)
    s = settings_for(tmp_path / "a", golden_fraction=0.0, min_tag_count=1)
    result = importer.run(s, str(src))
    assert snapshot(src) == before
    assert result.format == "groundtruth" and result.n_images == 12 and result.n_quarantined == 0
    by_path = {r["original"]: r for r in manifest.read_manifest(s.data_dir)}
    # day2/IMG_0000.jpg is photo 1 (VOCAB[1]), not day1's photo of the same name.
    ids = {r["image_id"]: r for r in by_path.values()}
    assert len(ids) == 12
    day2 = next(r for o, r in by_path.items() if o.endswith("day2/IMG_0000.jpg"))
    assert day2["tags"] == VOCAB[1]

    vx = tmp_path / "vx"
    (vx / "flowers").mkdir(parents=True)
    lines = []
    for i in range(12):
        if i:  # the first was never copied from the bucket
            (vx / "flowers" / f"{i}.jpg").write_bytes(jpeg(photo(1400 + i)))
        use = ("training", "test", "validation")[i % 3]
        lines.append(
            {
                "imageGcsUri": f"gs://acme/flowers/{i}.jpg",
                "classificationAnnotation": {"displayName": VOCAB[i % 3]},
                "dataItemResourceLabels": {"aiplatform.googleapis.com/ml_use": use},
            }
        )
    (vx / "export.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    s = settings_for(tmp_path / "b", golden_fraction=0.0, min_tag_count=1, max_quarantine_fraction=0.2)
    result = importer.run(s, str(vx / "export.jsonl"))
    assert result.format == "vertex" and result.n_images == 11 and result.n_quarantined == 1
    assert result.splits == {"train": 3, "validation": 4, "test": 4}
    report = (s.reports_dir / "import.md").read_text()
    assert "copy the bucket's images beside the file" in report


def _labelbox_row(row_data: str, *labels: dict, external_id: str | None = None) -> dict:
    """One data row of a Labelbox export v2 (NDJSON), with the fields a project export carries."""
    data_row = {"id": f"clf9spzxq{len(row_data):03d}m071nehy60a6v", "row_data": row_data}
    if external_id is not None:
        data_row["external_id"] = external_id
    data_row["details"] = {"dataset_id": "clf9spwgw04w207ymfwy826qv", "dataset_name": "spring shoot"}
    return {
        "data_row": data_row,
        "media_attributes": {"height": 64, "width": 96, "mime_type": "image/jpeg"},
        "attachments": [],
        "metadata_fields": [],
        "projects": {
            "cltd3vkju021907u63w2odj69": {
                "name": "Spring birds",
                "labels": list(labels),
                "project_details": {"task_name": "Done", "workflow_status": "DONE", "batch_name": "b1"},
            }
        },
    }


def _labelbox_label(species: str, stars: str, skipped: bool = False) -> dict:
    def radio(question: str, answer: str) -> dict:
        chosen = {
            "feature_id": "clkmxp0cd00043b6l8stcqsrv",
            "name": answer,
            "value": answer,
            "classifications": [],
        }
        return {
            "feature_id": "clkmxp0cd00033b6l8stcqsrv",
            "name": question,
            "value": question,
            "radio_answer": chosen,
        }

    at = "2024-04-08T16:21:26.000+00:00"
    return {
        "label_kind": "Default",
        "version": "1.0.0",
        "id": "clur5tlda1n2a07dc0i0zdd4k",
        "label_details": {
            "created_at": at,
            "updated_at": at,
            "created_by": "ana@acme.example",
            "reviews": [],
        },
        "performance_details": {"seconds_to_create": 9, "seconds_to_review": 0, "skipped": skipped},
        "annotations": {
            "objects": [],
            "classifications": [] if skipped else [radio("Species", species), radio("Stars", stars)],
            "relationships": [],
        },
    }


def test_a_labelbox_export_beside_its_photos_imports_its_classifications(tmp_path: Path) -> None:
    """An export v2 downloaded beside the photos it names by URL (one uploaded from a laptop, named by
    its external id; one skipped by its labeler; one never downloaded), then the export alone."""
    src = tmp_path / "lb"
    (src / "photos").mkdir(parents=True)
    rows = []
    for i in range(12):
        name = f"IMG_{i:04d}.jpg"
        if i != 11:
            (src / "photos" / name).write_bytes(jpeg(photo(1500 + i)))
        hosted = f"https://storage.labelbox.com/ckk4q1vgapsau07324awnsjq2%2F{i}-b10f?Expires=1630706709794&Signature=W8R"
        row_data = hosted if i == 3 else f"https://storage.googleapis.com/acme-shoots/2024/photos/{name}"
        lab = _labelbox_label(VOCAB[i % 3], str(1 + i % 5), skipped=i == 5)
        rows.append(_labelbox_row(row_data, lab, external_id=name if i == 3 else None))
    (src / "export.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = snapshot(src)
    s = settings_for(tmp_path / "a", golden_fraction=0.0, min_tag_count=1, max_quarantine_fraction=0.2)
    result = importer.run(s, str(src), ImportOptions(score_column="Stars"))
    assert snapshot(src) == before
    assert result.format == "labelbox" and result.n_images == 10 and result.n_quarantined == 1
    assert result.score_name == "Stars" and result.tags == list(VOCAB)
    by_name = {Path(r["original"]).name: r for r in manifest.read_manifest(s.data_dir)}
    assert set(by_name) == {f"IMG_{i:04d}.jpg" for i in range(11) if i != 5}  # 5 skipped, 11 missing
    assert by_name["IMG_0003.jpg"]["tags"] == VOCAB[0] and float(by_name["IMG_0003.jpg"]["score"]) == 4.0
    report = (s.reports_dir / "import.md").read_text()
    assert "IMG_0011.jpg" in report and "download the images beside the export" in report
    assert "1 data rows skipped by their labelers" in report

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "export.ndjson").write_text((src / "export.ndjson").read_text())
    with pytest.raises(
        FormatError,
        match="none of the 11 photos export.ndjson names is in the source .*: download the images beside",
    ):
        importer.run(settings_for(tmp_path / "b"), str(alone / "export.ndjson"))


def test_an_azureml_labels_export_beside_its_datastore_folder(tmp_path: Path) -> None:
    """Azure ML data labeling's export (JSON lines, multi-label), given as SOURCE beside the datastore's
    folder copied down with azcopy."""
    src = tmp_path / "aml"
    folder = src / "workspaceblobstore" / "UI" / "2024-04-08_162126_UTC" / "birds"
    folder.mkdir(parents=True)
    store = "azureml://subscriptions/5f08d643-1910-4a38-a7c7-84a39d4f42e0/resourcegroups/vision-rg/workspaces/vision-ws/datastores/workspaceblobstore/paths"
    lines = []
    for i in range(10):
        (folder / f"{i}.jpg").write_bytes(jpeg(photo(1600 + i)))
        tags = [VOCAB[i % 3]] + ([VOCAB[(i + 1) % 3]] if i % 4 == 0 else [])
        lines.append(
            {
                "image_url": f"{store}/UI/2024-04-08_162126_UTC/birds/{i}.jpg",
                "image_details": {"format": "jpg", "width": "96px", "height": "64px"},
                "label": tags,
                "label_confidence": [1.0] * len(tags),
            }
        )
    (src / "labeledDatasets.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    s = settings_for(tmp_path / "a", golden_fraction=0.0, min_tag_count=1)
    result = importer.run(s, str(src / "labeledDatasets.jsonl"))
    assert result.format == "azureml" and result.n_images == 10 and result.n_quarantined == 0
    rows = {Path(r["original"]).name: r for r in manifest.read_manifest(s.data_dir)}
    assert manifest.cell_to_tags(rows["4.jpg"]["tags"]) == [VOCAB[1], VOCAB[2]]


def test_the_golden_slice_leaves_each_assigned_split_its_share(tmp_path: Path) -> None:
    """Splits lightbox assigns by group give the golden set their share each: taken from test alone, the
    15% test split of 100 photos had kept 5 (the gates then judged on a handful)."""
    s = settings_for(tmp_path)
    result = importer.run(s, str(imagefolder(tmp_path / "src", 100)), OPTS)
    rows = manifest.read_manifest(s.data_dir)
    share = Counter(r["split"] for r in rows)
    assert result.n_golden >= 8 and len(rows) + result.n_golden == 100
    assert 0.10 <= share["test"] / len(rows) <= 0.20, share
    assert 0.10 <= share["validation"] / len(rows) <= 0.20, share
    golden_from = {r["image_id"] for r in manifest.read_manifest(s.golden_dir)}
    assert not golden_from & {r["image_id"] for r in rows}


APPEND = ImportOptions(**{**OPTS.__dict__, "append": True})


def _drop_photos(source: Path, names: set[str]) -> None:
    """The photos ``names`` (file names in pics/) leave an imagefolder source: file and row."""
    lines = (source / "metadata.csv").read_text().splitlines()
    (source / "metadata.csv").write_text(
        "\n".join(ln for ln in lines if Path(ln.split(",")[0]).name not in names) + "\n"
    )
    for name in names:
        (source / "pics" / name).unlink()


def test_reimporting_the_first_source_after_an_append_refuses_to_drop_the_appended_photos(
    tmp_path: Path,
) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    a, b = imagefolder(tmp_path / "a", 12), imagefolder(tmp_path / "b", 6, start=100)
    importer.run(s, str(a), OPTS)
    importer.run(s, str(b), APPEND)
    spec = manifest.read_label_spec(s.data_dir)
    assert spec.source == str(a) and spec.appended == (str(b),)
    before = snapshot(s.data_dir)
    refused = rf"appended from {b}: .* would drop 6 images .*data/ is unchanged"
    with pytest.raises(ImportFailed, match=refused):
        importer.run(s, str(a), OPTS)
    assert snapshot(s.data_dir) == before
    # --append of the first source relabels its photos and keeps the others, as before
    assert importer.run(s, str(a), APPEND).n_images == 18


def test_a_reimport_that_removes_images_or_replaces_the_dataset_says_so(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=1)
    a = imagefolder(tmp_path / "a", 12)
    importer.run(s, str(a), OPTS)
    assert importer.run(s, str(a), OPTS).notes == []  # the same photos: nothing to say
    _drop_photos(a, {"IMG_0000.jpg", "IMG_0001.jpg"})
    result = importer.run(s, str(a), OPTS)
    assert result.n_images == 10
    assert "2 images no longer in the source were removed from the dataset" in result.notes
    other = importer.run(s, str(imagefolder(tmp_path / "c", 8, start=200)), OPTS)
    assert f"the dataset from {a} (10 images) is replaced by this import" in other.notes
    assert other.n_images == 8


def test_a_label_spec_written_before_appends_were_recorded_still_reads() -> None:
    old = manifest.LabelSpec(tag_counts={"wren": 6}, source="a").to_dict()
    assert "appended" not in old  # no append: labels.json keeps its bytes (no new DVC version)
    assert manifest.LabelSpec.from_dict(old).appended == ()
    spec = manifest.LabelSpec(source="a", appended=("b", "c"))
    assert manifest.LabelSpec.from_json(spec.to_json()) == spec


def _rated(root: Path, n: int, *, rating: str, tags: bool) -> Path:
    """An imagefolder source whose every photo has the same rating, with or without a tags column."""
    (root / "pics").mkdir(parents=True)
    rows = ["file_name,rating" + (",labels" if tags else "")]
    for i in range(n):
        (root / "pics" / f"{i}.jpg").write_bytes(jpeg(photo(1700 + i)))
        rows.append(f"pics/{i}.jpg,{rating}" + (f",{VOCAB[i % 3]}" if tags else ""))
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


CONSTANT = (
    "every score is 3: a score model learns nothing from it (check the score column, or give --score-range)"
)


def test_a_constant_score_beside_tags_is_left_out_and_said(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    src = _rated(tmp_path / "src", 18, rating="3", tags=True)
    result = importer.run(s, str(src), ImportOptions(score_column="rating", tags_column="labels"))
    assert any(n.startswith(CONSTANT) for n in result.notes), result.notes
    assert not any("observed min and max" in n for n in result.notes)
    spec = manifest.read_label_spec(s.data_dir)
    assert spec.score_name is None and spec.score_range is None and spec.tags == VOCAB
    assert all(r["score"] == "" for r in manifest.read_manifest(s.data_dir))
    assert validate_data.run(s).passed  # no score where the spec declares none


def test_a_constant_score_alone_is_refused(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    src = _rated(tmp_path / "src", 12, rating="3", tags=False)
    with pytest.raises(ImportFailed, match=r"every score is 3: .*no tag .*data/ is unchanged"):
        importer.run(s, str(src), ImportOptions(score_column="rating"))
    assert not s.data_dir.exists()


def test_one_photo_under_two_names_with_different_labels_is_merged_and_said(tmp_path: Path) -> None:
    src = imagefolder(tmp_path / "src", 12)  # IMG_0001: rating 2, kestrel; IMG_0002: rating 3, wren
    (src / "pics" / "copy.jpg").write_bytes((src / "pics" / "IMG_0001.jpg").read_bytes())
    (src / "pics" / "same.jpg").write_bytes((src / "pics" / "IMG_0002.jpg").read_bytes())
    with (src / "metadata.csv").open("a") as f:
        f.write("pics/copy.jpg,9,heron\npics/same.jpg,3,wren\n")  # same.jpg: the same labels, silent
    result = importer.run(settings_for(tmp_path, golden_fraction=0.0), str(src), OPTS)
    assert result.exact_duplicates == 2
    merged = [n for n in result.notes if "several names" in n]
    assert merged == [
        "1 photos appear under several names with different labels, merged (mean score, tags together): "
        "pics/IMG_0001.jpg = pics/copy.jpg (score 2 vs 9, tags kestrel vs heron)"
    ]


def test_a_golden_photo_relabelled_in_the_source_is_said_not_applied(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    src = imagefolder(tmp_path / "src", 40)
    importer.run(s, str(src), OPTS)
    assert not any("golden photos differ" in n for n in importer.run(s, str(src), OPTS).notes)
    golden = manifest.read_manifest(s.golden_dir)[0]
    lines = (src / "metadata.csv").read_text().splitlines()
    relabel = f"{golden['original']},10,heron|kestrel|wren"  # the photo has at most two tags
    fixed = [relabel if ln.startswith(golden["original"] + ",") else ln for ln in lines]
    (src / "metadata.csv").write_text("\n".join(fixed) + "\n")
    frozen = snapshot(s.golden_dir)
    result = importer.run(s, str(src), OPTS)
    assert snapshot(s.golden_dir) == frozen
    assert any(
        n.startswith("labels of 1 golden photos differ from the frozen golden set and were not applied")
        and "--golden GOLDEN_SOURCE" in n
        for n in result.notes
    ), result.notes


def test_an_append_that_brings_a_new_tag_says_the_earlier_images_count_as_without_it(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    importer.run(s, str(imagefolder(tmp_path / "a", 12)), OPTS)
    b = imagefolder(tmp_path / "b", 7, start=100)
    header, *rows = (b / "metadata.csv").read_text().splitlines()
    (b / "metadata.csv").write_text("\n".join([header, *(f"{r}|Night" for r in rows)]) + "\n")
    result = importer.run(s, str(b), APPEND)
    assert (
        "new tags in this batch: Night (7 images); the 12 earlier images were never labelled for them "
        "and count as without them: relabel them or expect a weaker tag"
    ) in result.notes
    again = importer.run(s, str(b), APPEND)  # Night is no longer new
    assert not any(n.startswith("new tags") for n in again.notes)


def test_a_table_naming_its_photos_by_url_finds_them_in_the_source(tmp_path: Path) -> None:
    """A table exported from a database or a crowd-labelling job (Mechanical Turk's batch results:
    ``Input.image_url``, ``Answer.<question>``) names each photo by its bucket URL: the photos downloaded
    beside it are found by the longest ending of the URL's key, else by name in any folder, and a URL of
    a photo not downloaded is reported missing by that URL."""
    src = tmp_path / "turk"
    (src / "images").mkdir(parents=True)
    for i in range(12):
        (src / "images" / f"p{i}.jpg").write_bytes(jpeg(photo(900 + i)))
    bucket = "https://acme-photos.s3.us-east-1.amazonaws.com/shoots/2024"
    rows = [f"3X{i}ABC,A1W{i},{bucket}/images/p{i}.jpg,{VOCAB[i % 3]}" for i in range(11)]
    rows.append(f"3X11ABC,A1W11,https://cdn.acme.example/p11.jpg?w=1024,{VOCAB[0]}")  # a CDN's name
    rows.append(f"3X12ABC,A1W12,{bucket}/images/p12.jpg,{VOCAB[1]}")  # never downloaded
    header = "HITId,WorkerId,Input.image_url,Answer.category.label\n"
    (src / "Batch_4921_batch_results.csv").write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    s = settings_for(tmp_path, golden_fraction=0.0, min_tag_count=1, max_quarantine_fraction=0.2)
    result = importer.run(
        s, str(src / "Batch_4921_batch_results.csv"), ImportOptions(tags_column="Answer.category.label")
    )
    assert result.n_images == 12 and result.n_quarantined == 1
    assert result.tags == sorted(VOCAB)
    by_name = {Path(r["original"]).name: r["tags"] for r in manifest.read_manifest(s.data_dir)}
    assert by_name["p0.jpg"] == VOCAB[0] and by_name["p11.jpg"] == VOCAB[0]
    report = (s.reports_dir / "import.md").read_text()
    assert "p12.jpg" in report


def test_coco_exports_of_image_classes_import_a_split_per_folder(tmp_path: Path) -> None:
    """Image classification in COCO's layout, one file per split folder beside its photos (as Roboflow
    writes it; Azure ML's COCO export is the same file), given as the folder: every split imported, the
    user's files unchanged; a detection file (boxes only) is refused saying why."""
    src = tmp_path / "coco"
    n = 0
    for split, count in (("train", 8), ("valid", 3), ("test", 3)):
        (src / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(count):
            name = f"{split}_{i}.jpg"
            (src / split / name).write_bytes(jpeg(photo(1700 + n)))
            images.append({"id": i, "file_name": name, "width": 96, "height": 64})
            annotations.append({"id": i, "image_id": i, "category_id": 1 + n % 3, "area": 0})
            n += 1
        categories = [{"id": c + 1, "name": VOCAB[c], "supercategory": "none"} for c in range(3)]
        (src / split / "_annotations.coco.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    before = snapshot(src)
    s = settings_for(tmp_path / "a", golden_fraction=0.0, min_tag_count=1)
    result = importer.run(s, str(src))
    assert snapshot(src) == before
    assert result.format == "coco" and result.n_images == 14 and result.n_quarantined == 0
    assert result.splits == {"train": 8, "validation": 3, "test": 3} and result.tags == sorted(VOCAB)

    boxes = tmp_path / "boxes.json"
    boxes.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "train_0.jpg"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20]}],
                "categories": [{"id": 1, "name": "heron"}],
            }
        )
    )
    with pytest.raises(FormatError, match="boxes or polygons and no image classification label"):
        importer.run(settings_for(tmp_path / "b"), str(boxes))


def test_photos_an_export_leaves_out_are_said_once_where_found_by_name(tmp_path: Path) -> None:
    """A Labelbox export naming its photos by hosted URL and external id, the photos downloaded into
    images/: the skipped row's photo is found by name as the others are, and said once (skipped), not
    also as a photo no labels file names."""
    src = tmp_path / "lb"
    (src / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        name = f"IMG_{i:04d}.jpg"
        (src / "images" / name).write_bytes(jpeg(photo(1800 + i)))
        hosted = f"https://storage.labelbox.com/ckk4q1vg%2F{i}-b10f?Expires=1630706709794&Signature=W8R"
        lab = _labelbox_label(VOCAB[i % 3], str(1 + i % 5), skipped=i == 5)
        rows.append(_labelbox_row(hosted, lab, external_id=name))
    (src / "export.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = settings_for(tmp_path / "a", golden_fraction=0.0, min_tag_count=1)
    result = importer.run(s, str(src / "export.ndjson"), ImportOptions(score_column="Stars"))
    assert result.n_images == 7
    report = (s.reports_dir / "import.md").read_text()
    assert "1 data rows skipped by their labelers" in report
    assert "in no labels file" not in report


def test_a_file_name_that_is_not_utf8_is_said_and_the_rest_imports(tmp_path: Path) -> None:
    """A Latin-1 name (an old Windows zip, a camera card) had failed the import with "'utf-8' codec can't
    encode character '\\udce9'", naming no file, and left an empty report: it is left out, named with
    its byte escaped, and the photos around it import."""
    import os

    source = imagefolder(tmp_path / "src", 40)
    odd = os.path.join(os.fsencode(source / "pics"), b"caf\xe9.jpg")
    with open(odd, "wb") as f:
        f.write(jpeg(photo(99, (96, 64))))
    s = settings_for(tmp_path)
    result = importer.run(s, str(source), OPTS)
    assert result.n_images + result.n_golden == 40
    note = next(n for n in result.notes if "not UTF-8" in n)
    assert "1 files whose names are not UTF-8 were not read (pics/caf\\xe9.jpg)" in note and "convmv" in note
    assert "pics/caf\\xe9.jpg" in (s.state / "reports" / "import.md").read_text(encoding="utf-8")


def test_imports_take_turns_and_a_killed_one_never_locks_the_project(tmp_path: Path) -> None:
    """Two imports at once had left the golden slice inside data/ (the second read the golden set before
    the first wrote it, then swapped in its own data/), both exiting 0. A second import is refused at
    once, naming the one running, with nothing changed; once that process is gone (SIGKILL: no cleanup
    runs) the next import goes ahead, and the golden photos are apart."""
    import signal
    import subprocess
    import sys
    import time

    from lightbox.locks import Busy

    source = imagefolder(tmp_path / "src", 40)
    s = settings_for(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from lightbox.locks import exclusive\n"
            "from lightbox.settings import Settings\n"
            f"with exclusive(Settings(project_dir={str(s.project_dir)!r}), 'import'):\n"
            "    print('held', flush=True); time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=rf"another import in this project is running \(process {holder.pid} "):
            importer.run(s, str(source), OPTS)
        assert not s.data_dir.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    result = importer.run(s, str(source), OPTS)
    assert result.n_images + result.n_golden == 40
    golden = {r["image_id"] for r in manifest.read_manifest(s.golden_dir)}
    assert golden and not golden & {r["image_id"] for r in manifest.read_manifest(s.data_dir)}
    checked = validate_data.run(s)
    assert any(c.check == "no golden photo is in the dataset" and c.success for c in checked.checks)


def test_validation_fails_when_a_golden_photo_is_in_the_dataset(tmp_path: Path) -> None:
    """What the race had left, with every check passing: now a failure that says what to do."""
    source = imagefolder(tmp_path / "src", 40)
    s = settings_for(tmp_path)
    importer.run(s, str(source), OPTS)
    header, rows = validate_data._read(s.data_dir)
    leaked = manifest.read_manifest(s.golden_dir)[0]
    (s.data_dir / leaked["path"]).write_bytes((s.golden_dir / leaked["path"]).read_bytes())
    manifest.write_csv(s.data_dir / manifest.MANIFEST_NAME, header, [*rows, {**leaked, "split": "train"}])
    with pytest.raises(validate_data.DataValidationError, match="1 golden photos are also in data/"):
        validate_data.run(s)


def test_an_append_on_another_declared_score_scale_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    importer.run(s, str(imagefolder(tmp_path / "a", 20)), OPTS)  # rated 1-10, declared 1..10
    before = snapshot(s.data_dir)
    batch = imagefolder(tmp_path / "b", 6, start=100)
    other_scale = ImportOptions(**{**OPTS.__dict__, "append": True, "score_range": "0,100"})
    refused = r"on 0\.\.100, but the dataset declares 1\.\.10 .*data/ is unchanged"
    with pytest.raises(ImportFailed, match=refused):
        importer.run(s, str(batch), other_scale)
    assert snapshot(s.data_dir) == before
    same = importer.run(s, str(batch), ImportOptions(**{**OPTS.__dict__, "append": True}))
    assert same.n_new == 6 and same.score_range == [1.0, 10.0]


def test_an_append_declaring_a_scale_the_observed_scores_do_not_fit_is_refused(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    columns = ImportOptions(score_column="rating", tags_column="labels")
    importer.run(s, str(imagefolder(tmp_path / "a", 20)), columns)
    assert manifest.read_label_spec(s.data_dir).score_range_source == "observed"  # 1..10 seen
    batch = imagefolder(tmp_path / "b", 6, start=100)
    narrow = ImportOptions(score_column="rating", tags_column="labels", append=True, score_range="0,5")
    with pytest.raises(ImportFailed, match=r"earlier images are scored 1\.\.10"):
        importer.run(s, str(batch), narrow)
    wide = importer.run(s, str(batch), dataclasses.replace(narrow, score_range="0,10"))
    assert wide.score_range == [0.0, 10.0] and any("now read on 0..10" in n for n in wide.notes), wide.notes


def test_a_reimport_without_a_range_keeps_the_given_one_and_says_so(tmp_path: Path) -> None:
    s = settings_for(tmp_path, golden_fraction=0.0)
    source = imagefolder(tmp_path / "src", 20)
    columns = ImportOptions(score_column="rating", tags_column="labels")
    importer.run(s, str(source), dataclasses.replace(columns, score_range="0,20"))
    again = importer.run(s, str(source), columns)
    assert again.score_range == [0.0, 20.0]
    assert "scores read on 0..20, the range given at an earlier import: give --score-range to change it" in (
        again.notes
    )


def test_moving_a_rare_tags_group_to_train_never_empties_a_split() -> None:
    # A small dataset: one validation group, and it alone holds "heron" (seen on 5 images).
    rows = [
        {"image_id": f"{g}{i}", "group": g, "split": split, "tags": tags}
        for g, split, tags, n in (
            ("a", "train", "wren", 6),
            ("b", "train", "wren", 5),
            ("c", "train", "kestrel", 6),
            ("v", "validation", "heron", 5),
            ("t", "test", "wren", 3),
        )
        for i in range(n)
    ]
    out = importer.ensure_tags_in_train(rows, min_count=5)
    split_of = {r["group"]: r["split"] for r in out}
    assert split_of["v"] == "train"  # heron gets its training examples
    assert split_of["b"] == "validation"  # the smallest train group whose tags stay in train takes its place
    assert split_of["c"] == "train" and split_of["t"] == "test"  # kestrel's only group stays in train
    assert {r["split"] for r in out} == {"train", "validation", "test"}
