"""Parsing the export formats (no image is read): imagefolder, Label Studio JSON and JSON_MIN,
classfolders, detection and the cells real exports contain."""

from __future__ import annotations

import json

import pytest

from lightbox import label_formats as lf
from lightbox.label_formats import Columns, FormatError, Roots

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("cell", "tags"),
    [
        ('["b", "a"]', ("a", "b")),
        (["x", " y "], ("x", "y")),
        ("cat|dog", ("cat", "dog")),
        ("cat; dog", ("cat", "dog")),
        ("cat,dog,cat", ("cat", "dog")),
        ("sunset", ("sunset",)),
        ("", ()),
        (None, ()),
        ({"choices": ["b", "a"]}, ("a", "b")),
    ],
)
def test_tag_cells_as_exports_write_them(cell: object, tags: tuple[str, ...]) -> None:
    assert lf.parse_tags_cell(cell) == tags


def test_bad_cells_raise_with_the_value() -> None:
    with pytest.raises(ValueError, match="'great' is not a number"):
        lf.parse_score_cell("great")
    with pytest.raises(ValueError, match="not a finite number"):
        lf.parse_score_cell("inf")
    # What spreadsheets and pandas write for "no value" is an empty cell; percentages and "4/5" are numbers.
    assert [lf.parse_score_cell(v) for v in ("N/A", "#N/A", "NaN", "-", " null ")] == [None] * 5
    assert [lf.parse_score_cell(v) for v in ("85%", "4/5", " 3.5 / 10 ")] == [85.0, 4.0, 3.5]
    with pytest.raises(ValueError, match="'4/5/2026' is not a number"):
        lf.parse_score_cell("4/5/2026")
    with pytest.raises(ValueError, match="'holdout' is not one of"):
        lf.parse_split("holdout")
    assert lf.parse_split("VAL") == "validation" and lf.parse_split("dev") == "validation"
    assert lf.parse_score_cell({"rating": 4}) == 4.0


def test_detection() -> None:
    assert lf.detect(["metadata.csv", "a.jpg"]) == "imagefolder"
    assert lf.detect(["train/metadata.jsonl", "train/a.jpg"]) == "imagefolder"
    assert lf.detect(["export.json", "media/a.jpg"]) == "labelstudio"
    assert lf.detect(["cat/a.jpg", "dog/b.png"]) == "classfolders"
    assert lf.detect(["project-1.json"], source_is_file=True) == "labelstudio"
    with pytest.raises(FormatError, match="--format"):
        lf.detect(["notes.txt"])


def _files(tree: dict[str, bytes]):
    return sorted(tree), tree.__getitem__


def test_imagefolder_csv_with_split_subfolders_and_unknown_columns() -> None:
    tree = {
        "train/metadata.csv": b"file_name,rating,labels,photographer\na.jpg,7,cat|dog,ann\nb.jpg,,,bob\n",
        "val/metadata.csv": b'file_name,rating,labels,photographer\nc.jpg,3,["cat"],ann\n',
    }
    files, read = _files(tree)
    parsed = lf.parse_imagefolder(files, read, Columns(score="rating", tags="labels"))
    by_ref = {r.ref: r for r in parsed.records}
    assert by_ref["train/a.jpg"].score == 7.0 and by_ref["train/a.jpg"].tags == ("cat", "dog")
    assert by_ref["train/b.jpg"].score is None and by_ref["train/b.jpg"].split == "train"
    assert by_ref["val/c.jpg"].split == "validation" and by_ref["val/c.jpg"].tags == ("cat",)
    assert parsed.score_name == "rating" and parsed.has_tags
    assert parsed.notes == ["columns not used (unknown): photographer"]


def test_imagefolder_jsonl_problems_are_reported_per_row() -> None:
    lines = [
        {"file_name": "a.jpg", "score": 0.5, "tags": ["x"]},
        {"file_name": "a.jpg", "score": 0.6, "tags": ["y"]},  # another rater's row: merged
        {"file_name": "a.jpg", "score": 0.7, "split": "test"},
        {"file_name": "a.jpg", "score": 9, "split": "train"},  # another split: that row is a problem
        {"file_name": "b.jpg", "score": "high"},
        {"file_name": "../outside.jpg", "score": 1},
        {"score": 1},
    ]
    data = ("\n".join(json.dumps(r) for r in lines) + "\n{broken\n").encode()
    parsed = lf.parse_imagefolder(["metadata.jsonl"], {"metadata.jsonl": data}.__getitem__, Columns())
    assert [(r.ref, r.tags, r.split) for r in parsed.records] == [("a.jpg", ("x", "y"), "test")]
    assert parsed.records[0].score == pytest.approx(0.6)
    reasons = {p.origin: p.reason for p in parsed.problems}
    assert reasons["metadata.jsonl:4"] == "a.jpg listed again with split train"
    assert "1 images are listed on several rows" in " ".join(parsed.notes)
    assert "1 with scores that differ, most: a.jpg (0.5, 0.6, 0.7 -> 0.6)" in " ".join(parsed.notes)
    assert reasons["b.jpg"] == "score 'high' is not a number"
    assert "outside the source folder" in reasons["../outside.jpg"]
    assert reasons["metadata.jsonl:7"] == "no file_name"
    assert reasons["metadata.jsonl:8"].startswith("line 8 is not JSON")


def test_imagefolder_named_column_that_is_absent_is_an_error() -> None:
    with pytest.raises(FormatError, match="no score column 'stars'"):
        lf.parse_imagefolder(
            ["metadata.csv"],
            {"metadata.csv": b"file_name,score\na.jpg,1\n"}.__getitem__,
            Columns(score="stars"),
        )


def _ls_task(task_id: int, image: str, annotations: list[list[dict]]) -> dict:
    return {
        "id": task_id,
        "data": {"image": image},
        "annotations": [
            {"id": task_id * 10 + i, "result": result, "was_cancelled": False, "completed_by": i}
            for i, result in enumerate(annotations)
        ],
    }


def _choices(*tags: str) -> dict:
    return {"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": list(tags)}}


def _rating(value: int) -> dict:
    return {"from_name": "quality", "to_name": "image", "type": "rating", "value": {"rating": value}}


def test_labelstudio_json_aggregates_annotators_and_resolves_paths() -> None:
    tasks = [
        # Three annotators: mean rating, a tag counts when most chose it.
        _ls_task(
            1,
            "/data/local-files/?d=shoots/a%20b.jpg",
            [
                [_choices("sky", "sea"), _rating(4)],
                [_choices("sky"), _rating(5)],
                [_choices("sea"), _rating(3)],
            ],
        ),
        _ls_task(2, "/data/upload/3/7f2a-c.png", [[_choices("sky"), _rating(2)]]),
        _ls_task(3, "s3://bucket/raw/d.jpg", [[_choices(), _rating(1)]]),
        _ls_task(4, "https://example.com/e.jpg", [[_rating(1)]]),
        _ls_task(5, "f.jpg", []),
        {
            "id": 6,
            "data": {"image": "g.jpg"},
            "annotations": [{"result": [_rating(5)], "was_cancelled": True}],
        },
    ]
    roots = Roots(export_dir="/exports", local_files_root="/srv/photos", media_root="/ls/media")
    parsed = lf.parse_labelstudio(json.dumps(tasks).encode(), "export.json", roots, Columns())
    by_ref = {r.ref: r for r in parsed.records}
    a = by_ref["/srv/photos/shoots/a b.jpg"]
    assert a.score == 4.0 and a.tags == ("sea", "sky")
    assert by_ref["/ls/media/upload/3/7f2a-c.png"].tags == ("sky",)
    assert by_ref["s3://bucket/raw/d.jpg"].score == 1.0
    assert parsed.score_name == "quality" and parsed.has_tags
    reasons = " / ".join(p.reason for p in parsed.problems)
    assert "web URL" in reasons and len(parsed.problems) == 1
    # Tasks nobody submitted (5 unlabelled, 6 cancelled) are the user's choice, not bad images: a note.
    assert "2 tasks without a submitted annotation" in " ".join(parsed.notes)


def test_labelstudio_json_min_one_row_per_annotation() -> None:
    rows = [
        {
            "image": "/data/upload/1/a.jpg",
            "id": 1,
            "tags": "sky",
            "quality": [{"rating": 4}],
            "annotator": 1,
            "annotation_id": 1,
            "created_at": "2026-01-01",
            "lead_time": 3.2,
        },
        {
            "image": "/data/upload/1/a.jpg",
            "id": 1,
            "tags": {"choices": ["sky", "sea"]},
            "quality": [{"rating": 2}],
            "annotator": 2,
            "annotation_id": 2,
            "created_at": "2026-01-01",
            "lead_time": 1.0,
        },
        {
            "image": "/data/upload/1/b.jpg",
            "id": 2,
            "tags": {"choices": ["sea", "sand"]},
            "quality": [{"rating": 5}],
            "annotator": 1,
            "annotation_id": 3,
            "created_at": "2026-01-01",
            "lead_time": 2.0,
        },
    ]
    roots = Roots(export_dir="/exports")
    parsed = lf.parse_labelstudio(json.dumps(rows).encode(), "min.json", roots, Columns())
    by_ref = {r.ref: r for r in parsed.records}
    assert set(by_ref) == {"/exports/upload/1/a.jpg", "/exports/upload/1/b.jpg"}
    a = by_ref["/exports/upload/1/a.jpg"]
    assert a.score == 3.0 and a.tags == ("sky",)  # sea: 1 of 2 annotators is no majority
    assert by_ref["/exports/upload/1/b.jpg"].tags == ("sand", "sea")
    assert parsed.score_name == "quality"


def test_labelstudio_export_that_is_not_a_list_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="JSON list of tasks"):
        lf.parse_labelstudio(b'{"tasks": []}', "x.json", Roots(export_dir="/e"), Columns())


def test_classfolders() -> None:
    parsed = lf.parse_classfolders(["cat/a.jpg", "cat/sub/b.png", "dog/a.jpg", "dog/readme.txt", "c.jpg"])
    assert [(r.ref, r.tags) for r in parsed.records] == [
        ("cat/a.jpg", ("cat",)),
        ("cat/sub/b.png", ("cat",)),
        ("dog/a.jpg", ("dog",)),
    ]
    assert {p.origin for p in parsed.problems} == {"c.jpg"}
    assert parsed.notes == ["not images by name, left out: 1 file (.txt 1)"]


def test_manifest_diff_lists_added_removed_relabelled_and_moved() -> None:
    from lightbox import manifest

    before = [
        {"image_id": "a", "score": "1", "tags": "x", "split": "train"},
        {"image_id": "b", "score": "2", "tags": "", "split": "test"},
        {"image_id": "c", "score": "3", "tags": "y", "split": "train"},
    ]
    after = [
        {"image_id": "a", "score": "1", "tags": "x", "split": "train"},
        {"image_id": "b", "score": "5", "tags": "", "split": "validation"},
        {"image_id": "d", "score": "4", "tags": "y", "split": "train"},
    ]
    d = manifest.diff(before, after)
    assert d.added == ["d"] and d.removed == ["c"]
    assert d.relabelled == [("b", "score=2; tags=", "score=5; tags=")]
    assert d.moved == [("b", "test", "validation")]


# --- what real exports hold (each case found by building files as the tools write them) ---------------


def test_hugging_face_nested_metadata_and_eval_folders_are_imagefolder() -> None:
    tree = {
        "data/train/metadata.jsonl": b'{"file_name": "a.jpg", "score": 3, "tags": ["sky"]}\n',
        "data/train/a.jpg": b"",
        "data/eval/metadata.jsonl": b'{"file_name": "b.jpg", "score": 4, "tags": []}\n',
        "data/eval/b.jpg": b"",
    }
    files, read = _files(tree)
    assert lf.detect(files) == "imagefolder"
    parsed = lf.parse_imagefolder(files, read, Columns())
    assert {(r.ref, r.split) for r in parsed.records} == {
        ("data/train/a.jpg", "train"),
        ("data/eval/b.jpg", "test"),
    }


def test_a_labels_file_under_another_name_is_never_taken_for_class_folders() -> None:
    with pytest.raises(FormatError, match="give the labels file itself as SOURCE .SOURCE/labels.csv"):
        lf.detect(["labels.csv", "images/a.jpg", "images/b.jpg"])
    assert lf.detect(["labels.csv"], source_is_file=True) == "imagefolder"
    parsed = lf.parse_imagefolder(
        ["labels.csv"],
        {"labels.csv": b"filename,score\n../photos/a.jpg,2\n"}.__getitem__,
        Columns(),
        metas=[("labels.csv", None)],
        outside_ok=True,
    )
    assert [r.ref for r in parsed.records] == ["../photos/a.jpg"]
    assert "image file names from the column 'filename'" in parsed.notes[0]


def test_class_folders_under_split_folders_and_their_sidecars() -> None:
    files = [
        "train/cat/a.jpg",
        "train/dog/b.jpg",
        "test/cat/c.jpg",
        "test/dog/d.JPG",
        "train/cat/a.aae",
        "Thumbs.db",
    ]
    parsed = lf.parse_classfolders(files)
    assert {(r.ref, r.tags, r.split) for r in parsed.records} == {
        ("train/cat/a.jpg", ("cat",), "train"),
        ("train/dog/b.jpg", ("dog",), "train"),
        ("test/cat/c.jpg", ("cat",), "test"),
        ("test/dog/d.JPG", ("dog",), "test"),
    }
    assert not parsed.problems and parsed.notes == ["not images by name, left out: 2 files (.aae 1, .db 1)"]
    with pytest.raises(FormatError, match="only one tag folder"):
        lf.parse_classfolders(["photos/a.jpg", "photos/b.jpg"])


@pytest.mark.parametrize(
    ("data", "score", "tags"),
    [
        # Excel in Germany or France: semicolons, decimal commas, trailing blank rows.
        (
            "file_name;score;tags\r\na.jpg;2,5;sunset|beach\r\n;;\r\n;;\r\n".encode("cp1252"),
            2.5,
            ("beach", "sunset"),
        ),
        # pandas' to_csv of a list column.
        (b"file_name,score,tags\na.jpg,3,\"['sunset', 'beach']\"\n", 3.0, ("beach", "sunset")),
        # Excel's "Unicode text": UTF-16 with a BOM, tab-separated.
        ("file_name\tscore\ttags\na.jpg\t4\tsunset\n".encode("utf-16"), 4.0, ("sunset",)),
    ],
)
def test_spreadsheets_as_people_save_them(data: bytes, score: float, tags: tuple[str, ...]) -> None:
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": data}.__getitem__, Columns())
    assert not parsed.problems
    assert [(r.ref, r.score, r.tags) for r in parsed.records] == [("a.jpg", score, tags)]


def test_a_row_with_more_fields_than_the_header_is_a_problem_not_a_crash() -> None:
    data = b"file_name,score,tags\na.jpg,2,sunset,beach\nb.jpg,3,sky\n"
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": data}.__getitem__, Columns())
    assert [r.ref for r in parsed.records] == ["b.jpg"]
    assert parsed.problems[0].reason.startswith("line 2 has 4 fields, the header 3: quote values")


def test_windows_names_and_a_cp1252_file() -> None:
    data = "file_name,score\nsub\\café.jpg,1\nC:\\Users\\me\\b.jpg,2\n".encode("cp1252")
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": data}.__getitem__, Columns())
    assert [r.ref for r in parsed.records] == ["sub/café.jpg"]
    assert "a Windows path" in parsed.problems[0].reason
    assert "not UTF-8: read as Windows-1252" in parsed.notes[0]
    with pytest.raises(ValueError, match="Windows path"):
        lf.resolve_ls_ref("C:\\photos\\a.jpg", Roots(export_dir="/e"))


def test_names_are_matched_to_the_disk_ignoring_case_and_accent_encoding() -> None:
    import unicodedata

    nfd = unicodedata.normalize("NFD", "Café/IMG_1.jpg")
    records = [lf.Record(ref="café/img_1.JPG", origin="x"), lf.Record(ref="other.jpg", origin="y")]
    matched, notes = lf.match_names(records, [nfd, "b.jpg"])
    assert [r.ref for r in matched] == [nfd, "other.jpg"] and "1 file names matched" in notes[0]
    assert lf.unlisted_images(matched, [], [nfd, "b.jpg", "notes.txt"]) == [
        "1 images in the source are in no labels file and were left out: b.jpg"
    ]
    twins = lf.tag_case_notes([lf.Record("a", "a", tags=("Sunset",)), lf.Record("b", "b", tags=("sunset",))])
    assert twins == ["tags that differ only in case or spacing, kept apart: Sunset / sunset"]


def _min_row(i: int, **labels: object) -> dict:
    """A JSON_MIN row as Label Studio's converter writes it: the task's data, then each control."""
    return {
        "image": f"/data/upload/1/p{i}.jpg",
        "photo_id": 5000 + i,  # a column of the imported tasks: never a label
        "id": i,
        **labels,
        "annotator": "ann@example.com",
        "annotation_id": i,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "lead_time": 2.5,
    }


def test_json_min_controls_as_label_studio_writes_them() -> None:
    rows = [
        _min_row(1, quality=[{"rating": 4}], tags="Food, drink"),
        _min_row(2, quality=[{"rating": 2}], tags={"choices": ["Food, drink", "Indoor"]}),
        _min_row(3, quality=[{"rating": 5}], category=[{"taxonomy": [["Nature", "Sunset"], ["People"]]}]),
    ]
    parsed = lf.parse_labelstudio(json.dumps(rows).encode(), "min.json", Roots(export_dir="/e"), Columns())
    by_ref = {r.ref: r for r in parsed.records}
    assert parsed.score_name == "quality" and [by_ref[f"/e/upload/1/p{i}.jpg"].score for i in (1, 2, 3)] == [
        4,
        2,
        5,
    ]
    assert by_ref["/e/upload/1/p1.jpg"].tags == ("Food, drink",)  # one choice, commas and all
    assert by_ref["/e/upload/1/p2.jpg"].tags == ("Food, drink", "Indoor")
    assert by_ref["/e/upload/1/p3.jpg"].tags == ("Nature/Sunset", "People")
    assert "columns not used: photo_id" in " ".join(parsed.notes)


def _result(control: str, kind: str, value: object) -> dict:
    return {"from_name": control, "to_name": "image", "type": kind, "value": {kind: value}}


def test_label_studio_controls_are_chosen_by_name_or_refused_when_ambiguous() -> None:
    tasks = [
        _ls_task(
            1,
            "a.jpg",
            [
                [
                    _result("quality", "rating", 5),
                    _result("composition", "rating", 1),
                    _result("kind", "taxonomy", [["Nature", "Sunset"]]),
                    _choices("Indoor|Outdoor"),
                ]
            ],
        ),
        _ls_task(2, "b.jpg", [[_result("quality", "rating", 3), _choices("sky")]]),
    ]
    export = json.dumps(tasks).encode()
    roots = Roots(export_dir="/e")
    with pytest.raises(FormatError, match="several score controls .quality, composition.: pick one"):
        lf.parse_labelstudio(export, "x.json", roots, Columns())
    with pytest.raises(FormatError, match="no control named 'Tags' for the tags .controls: quality .rating."):
        lf.parse_labelstudio(export, "x.json", roots, Columns(score="quality", tags="Tags"))
    parsed = lf.parse_labelstudio(export, "x.json", roots, Columns(score="quality"))
    # One task's choice holds lightbox's separator: that task is a problem, the export goes on.
    assert [(r.ref, r.score, r.tags) for r in parsed.records] == [("/e/b.jpg", 3.0, ("sky",))]
    assert "contains '|'" in parsed.problems[0].reason
    assert "controls not used: composition (rating)" in " ".join(parsed.notes)
    assert "union of the controls kind, tags" in " ".join(parsed.notes)


def test_json_min_task_data_is_never_taken_for_labels() -> None:
    """A bare number or free text in JSON_MIN is the task's own data (Label Studio writes a Rating as
    [{"rating": 4}]): taken as a label only under a label's name."""
    rows = [_min_row(i, tags="Cat", caption=f"my cat number {i}") for i in range(3)]
    parsed = lf.parse_labelstudio(json.dumps(rows).encode(), "min.json", Roots(export_dir="/e"), Columns())
    assert parsed.score_name is None and {r.tags for r in parsed.records} == {("Cat",)}
    assert "columns not used: photo_id, caption" in " ".join(parsed.notes)


def test_label_studio_csv_export() -> None:
    header = (
        '"image","id","quality","tags","annotator","annotation_id","created_at","updated_at","lead_time"\n'
    )
    lines = [
        '"/data/upload/1/a.jpg",1,"[{""rating"": 4}]",'
        '"{""choices"": [""Cat"", ""Indoor""]}","a@x",1,"t","t",2.0',
        '"/data/upload/1/b.jpg",2,"[{""rating"": 2}]","Dog","a@x",2,"t","t",1.5',
    ]
    data = (header + "\n".join(lines) + "\n").encode()
    assert lf.is_labelstudio_table("project-1.csv", data)
    assert not lf.is_labelstudio_table("labels.csv", b"file_name,score\na.jpg,1\n")
    parsed = lf.parse_labelstudio_table(
        data, "project-1.csv", Roots(export_dir="/e", media_root="/m"), Columns()
    )
    assert parsed.score_name == "quality"
    assert {(r.ref, r.score, r.tags) for r in parsed.records} == {
        ("/m/upload/1/a.jpg", 4.0, ("Cat", "Indoor")),
        ("/m/upload/1/b.jpg", 2.0, ("Dog",)),
    }


def test_a_table_without_a_score_column_takes_a_rating_column_and_says_so() -> None:
    data = b"file_name,rating,labels\na.jpg,4,cat|dog\n"
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": data}.__getitem__, Columns())
    assert parsed.score_name == "rating" and parsed.records[0].score == 4.0
    assert parsed.records[0].tags == ("cat", "dog")
    assert "the score column is 'rating'" in " ".join(parsed.notes)
    assert "the tags column is 'labels'" in " ".join(parsed.notes)


def test_a_name_matching_two_files_by_case_alone_is_said() -> None:
    _, notes = lf.match_names([lf.Record(ref="Img_1.JPG", origin="x")], ["img_1.jpg", "IMG_1.jpg"])
    assert notes == [
        "names that match several files (differing in case, extension or folder), left unmatched: "
        "Img_1.JPG (IMG_1.jpg, img_1.jpg)"
    ]


def test_json_min_names_the_column_it_was_given_and_lacks() -> None:
    rows = json.dumps([_min_row(1, quality=[{"rating": 4}], tags="Cat")]).encode()
    for given, named in ((Columns(tags="Tags"), "'Tags'"), (Columns(score="stars"), "'stars'")):
        with pytest.raises(FormatError, match=f"no column {named} .columns: image, photo_id, id, quality"):
            lf.parse_labelstudio(rows, "min.json", Roots(export_dir="/e"), given)


def test_roboflow_classes_csv_per_split_is_one_hot_tags() -> None:
    # Roboflow's multi-label export: a _classes.csv in each split folder, ", "-separated, one 0/1
    # column per class.
    files = {
        "train/_classes.csv": (
            b"filename, Cat, Dog, Outdoor\na_jpg.rf.1.jpg, 1, 0, 1\nb_jpg.rf.2.jpg, 0, 0, 0\n"
        ),
        "valid/_classes.csv": b"filename, Cat, Dog, Outdoor\nc_jpg.rf.3.jpg, 0, 1, 0\n",
    }
    listing = [*files, "train/a_jpg.rf.1.jpg", "train/b_jpg.rf.2.jpg", "valid/c_jpg.rf.3.jpg"]
    assert lf.detect(listing) == "imagefolder"
    parsed = lf.parse_imagefolder(listing, files.__getitem__, Columns())
    assert parsed.has_tags and parsed.score_name is None
    assert {(r.ref, r.tags, r.split) for r in parsed.records} == {
        ("train/a_jpg.rf.1.jpg", ("Cat", "Outdoor"), "train"),
        ("train/b_jpg.rf.2.jpg", (), "train"),
        ("valid/c_jpg.rf.3.jpg", ("Dog",), "validation"),
    }
    assert any("tags from 3 one-hot columns (Cat, Dog, Outdoor)" in n for n in parsed.notes)
    assert not any("not used" in n for n in parsed.notes)


def test_one_hot_columns_beside_a_score_and_as_celeba_writes_them() -> None:
    # -1/1 flags, a score column and a column that is not a flag (left unused, and said).
    data = b"image_id,score,Smiling,Blurry,photographer\n1.jpg,3.5,1,-1,ann\n2.jpg,2,-1,1,bob\n"
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": data}.__getitem__, Columns())
    assert [(r.score, r.tags) for r in parsed.records] == [(3.5, ("Smiling",)), (2.0, ("Blurry",))]
    assert any("columns not used (unknown): photographer" in n for n in parsed.notes)


def test_one_hot_columns_named_by_hand_and_their_bad_cells() -> None:
    data = b"file_name,is_test,cat,dog\na.jpg,0,1,0\nb.jpg,1,yes,maybe\n"
    read = {"metadata.csv": data}.__getitem__
    # Named: only those columns are tags; a cell that is not a flag is that row's problem.
    parsed = lf.parse_imagefolder(["metadata.csv"], read, Columns(tags="cat, dog"))
    assert [(r.ref, r.tags) for r in parsed.records] == [("a.jpg", ("cat",))]
    assert [p.reason for p in parsed.problems] == ["dog is 'maybe', not 0 or 1"]
    with pytest.raises(
        FormatError, match="no column 'Cat' for --tags-column .columns: cat, dog, file_name, is_test"
    ):
        lf.parse_imagefolder(["metadata.csv"], read, Columns(tags="Cat,dog"))
    # A tags column by its usual name wins over any 0/1 column.
    tagged = b"file_name,tags,flagged\na.jpg,cat|dog,1\n"
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": tagged}.__getitem__, Columns())
    assert parsed.records[0].tags == ("cat", "dog")


def test_names_without_their_extension_find_the_one_image_of_that_name() -> None:
    records = [lf.Record(ref=n, origin=n) for n in ("train_0", "train_1", "953619", "photo.jpg")]
    files = ["train_0.jpg", "train_1.jpg", "train_1.png", "953619.JPG", "953619.txt", "metadata.csv"]
    matched, notes = lf.match_names(records, files)
    assert [r.ref for r in matched] == ["train_0.jpg", "train_1", "953619.JPG", "photo.jpg"]
    assert "2 names without an extension matched the one image of that name" in notes
    assert any("train_1 (train_1.jpg, train_1.png)" in n for n in notes)


def test_tags_separated_by_spaces_as_kaggle_writes_them_and_phrases_kept_whole() -> None:
    words = ("haze", "clear", "cloudy", "primary", "water", "agriculture")
    cells = ["haze primary", "agriculture clear primary water"]
    cells += [f"{w} {v}" for w in words[:3] for v in words[3:]] + ["cloudy", "clear"]
    planet = ("image_name,tags\n" + "".join(f"train_{i},{c}\n" for i, c in enumerate(cells))).encode()
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": planet}.__getitem__, Columns())
    assert [r.tags for r in parsed.records][:2] == [
        ("haze", "primary"),
        ("agriculture", "clear", "primary", "water"),
    ]
    assert any("separates its tags by spaces ('haze primary')" in n for n in parsed.notes)
    # Phrases, each bringing a new word, stay whole; so does any column that uses another separator.
    phrases = b"file_name,tags\na.jpg,golden hour\nb.jpg,blue sky\nc.jpg,golden hour\nd.jpg,portrait\n"
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": phrases}.__getitem__, Columns())
    assert [r.tags for r in parsed.records] == [
        ("golden hour",),
        ("blue sky",),
        ("golden hour",),
        ("portrait",),
    ]
    assert not lf.space_separated(["a b", "a", "b", "b a", "a|b"])
    assert not lf.space_separated(["a", "b", "a"])
    assert not lf.space_separated(["golden hour", "blue hour", "blue sky"])
    assert not lf.space_separated(["car", "race car", "sports car", "dog", "hot dog", "cat", "cat toy"])
    assert lf.space_separated(["a b", "b c", "a c", "", "a", "b", "c", "b a", "c a"])


def test_a_numeric_column_under_another_name_is_pointed_at_when_there_is_no_score() -> None:
    data = b"file_name,labels,aesthetic_score,camera_id\na.jpg,cat,5.25,1\nb.jpg,dog,3.5,0\n"
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": data}.__getitem__, Columns())
    assert parsed.score_name is None
    assert (
        "no score column, but 'aesthetic_score' holds numbers: if it is the score, give --score-column "
        "aesthetic_score" in parsed.notes
    )


def test_a_name_is_found_in_another_folder_only_where_its_own_holds_no_photos() -> None:
    records = [lf.Record(ref=n, origin=n) for n in ("826373.jpg", "2019/IMG_0001.JPG", "2020/IMG_0002.JPG")]
    files = [
        "scores.csv",
        "1024x768/826373.jpg",
        "2019/IMG_0002.JPG",
        "2020/IMG_0001.JPG",
        "2020/IMG_0002.JPG",
    ]
    matched, notes = lf.match_names(records, files)
    # 2019/ has photos of its own: its missing IMG_0001.JPG stays missing, not 2020's.
    assert [r.ref for r in matched] == ["1024x768/826373.jpg", "2019/IMG_0001.JPG", "2020/IMG_0002.JPG"]
    assert notes == ["1 names were found in another folder, the only image of that name: 1024x768/ (1)"]


# --- CVAT ------------------------------------------------------------------------------------------------


def _cvat_image(i: int, name: str, inner: str = "", **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'  <image id="{i}" name="{name}" width="96" height="64"{extra}>\n{inner}  </image>\n'


def _cvat_tag(label: str, source: str = "manual", **attributes: str) -> str:
    attrs = "".join(f'<attribute name="{k}">{v}</attribute>' for k, v in attributes.items())
    return f'    <tag label="{label}" source="{source}">{attrs}</tag>\n'


def _cvat_xml(*images: str, prolog: str = "") -> bytes:
    meta = "<meta><task><name>shoot</name><labels><label><name>x</name></label></labels></task></meta>"
    body = "".join(images)
    head = f'<?xml version="1.0" encoding="utf-8"?>\n{prolog}<annotations>\n<version>1.1</version>\n'
    return f"{head}{meta}\n{body}</annotations>\n".encode()


_BOX = '    <box label="heron" source="manual" occluded="0" xtl="1" ytl="2" xbr="30" ybr="40" z_order="0"/>\n'


def test_cvat_image_tags_are_the_labels_and_object_annotations_are_not() -> None:
    xml = _cvat_xml(
        _cvat_image(
            0, "shoot/a.jpg", _cvat_tag("heron", quality="4") + _cvat_tag("wren", "auto"), subset="Train"
        ),
        _cvat_image(1, "shoot/b.jpg", _cvat_tag("heron", quality="4.5") + _BOX, subset="Test"),
        _cvat_image(2, "shoot/c.jpg", _BOX, subset="Train"),
    )
    files = ["annotations.xml", "images/shoot/a.jpg", "images/shoot/b.jpg", "images/shoot/c.jpg"]
    assert lf.detect(files, head=lambda f: xml) == "cvat"
    parsed = lf.parse_cvat(xml, "annotations.xml", files, Columns())
    assert [(r.ref, r.tags, r.score, r.split) for r in parsed.records] == [
        ("images/shoot/a.jpg", ("heron", "wren"), None, "train"),
        ("images/shoot/b.jpg", ("heron",), None, "test"),
        ("images/shoot/c.jpg", (), None, "train"),
    ]
    assert parsed.format == "cvat" and parsed.has_tags and parsed.score_name is None
    notes = " / ".join(parsed.notes)
    assert "2 object annotations (box 2) not read: each labels a region, not the photo" in notes
    assert "1 images have no <tag>: imported with no tags" in notes
    assert "tag attributes not used: quality ('quality' holds numbers: if it is the score, give " in notes
    assert "1 tags were proposed by a model" in notes
    # A numeric attribute is the score only when named.
    scored = lf.parse_cvat(xml, "annotations.xml", files, Columns(score="quality"))
    assert [r.score for r in scored.records] == [4.0, 4.5, None] and scored.score_name == "quality"
    with pytest.raises(FormatError, match="no tag attribute 'stars' for the score .tag attributes: quality."):
        lf.parse_cvat(xml, "annotations.xml", files, Columns(score="stars"))
    with pytest.raises(FormatError, match="--tags-column does not apply here"):
        lf.parse_cvat(xml, "annotations.xml", files, Columns(tags="label"))


def test_cvat_files_that_hold_no_image_labels_say_why() -> None:
    boxes = _cvat_xml(_cvat_image(0, "a.jpg", _BOX + _BOX.replace("box", "polygon", 1)))
    with pytest.raises(
        FormatError,
        match=r"2 object annotations \(box 1, polygon 1\) and no image-level <tag>: an object annotation",
    ):
        lf.parse_cvat(boxes, "annotations.xml", [], Columns())
    video = _cvat_xml().replace(
        b"</annotations>", b'<track id="0" label="heron"><box frame="0"/></track></annotations>'
    )
    with pytest.raises(FormatError, match="'CVAT for video' export .1 tracks"):
        lf.parse_cvat(video, "annotations.xml", [], Columns())
    with pytest.raises(FormatError, match="not well-formed XML .* line"):
        lf.parse_cvat(_cvat_xml(_cvat_image(0, "a.jpg"))[:-20], "annotations.xml", [], Columns())
    with pytest.raises(FormatError, match="not a CVAT export: its root is <dataset>"):
        lf.parse_cvat(b"<dataset><image/></dataset>", "labels.xml", [], Columns())
    # Two tags of one image that disagree on the named score: that image is a problem, the rest import.
    split = _cvat_xml(
        _cvat_image(0, "a.jpg", _cvat_tag("heron", quality="2") + _cvat_tag("wren", quality="5")),
        _cvat_image(1, "b.jpg", _cvat_tag("heron", quality="3")),
    )
    parsed = lf.parse_cvat(split, "annotations.xml", ["a.jpg", "b.jpg"], Columns(score="quality"))
    assert [r.ref for r in parsed.records] == ["b.jpg"]
    assert parsed.problems[0].reason == "its tags give different quality values (2, 5)"


def test_an_xml_bomb_is_refused_not_expanded() -> None:
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    bomb = _cvat_xml(
        _cvat_image(0, "a.jpg", _cvat_tag("&i;")), prolog=f"<!DOCTYPE annotations [{entities}]>\n"
    )
    assert lf.detect(["annotations.xml", "a.jpg"], head=lambda f: bomb[: lf.SNIFF_BYTES]) == "cvat"
    with pytest.raises(FormatError, match="declares a DTD, which CVAT never writes"):
        lf.parse_cvat(bomb, "annotations.xml", ["a.jpg"], Columns())


# --- FiftyOne --------------------------------------------------------------------------------------------


def test_fiftyone_image_classification_labels_json() -> None:
    labels = {
        "classes": ["heron", "kestrel", "wren"],
        "labels": {
            "6f1c": 0,
            "77ab": [1, 2],  # multilabel (Classifications)
            "8c3d": {"label": 2, "confidence": 0.9},
            "9d4e": None,  # not labelled
            "a5f0": 7,
        },
    }
    data = json.dumps(labels).encode()
    files = ["train/labels.json", "train/data/6f1c.jpg", "train/data/77ab.png", "train/data/8c3d.jpg"]
    files += ["train/data/9d4e.jpg", "train/data/a5f0.jpg"]
    assert lf.detect(files, head=lambda f: data) == "fiftyone"
    assert lf.detect(["labels.json"], source_is_file=True, head=lambda f: data) == "fiftyone"
    parsed = lf.parse_fiftyone(
        {"train/labels.json": data}.__getitem__, ["train/labels.json"], files, Columns()
    )
    assert [(r.ref, r.tags, r.split) for r in parsed.records] == [
        ("train/data/6f1c.jpg", ("heron",), "train"),
        ("train/data/77ab.png", ("kestrel", "wren"), "train"),
        ("train/data/8c3d.jpg", ("wren",), "train"),
    ]
    assert [(p.origin, p.reason) for p in parsed.problems] == [
        ("train/data/a5f0.jpg", "class index 7 is not one of the 3 classes")
    ]
    assert parsed.left_out == ["train/data/9d4e.jpg"] and parsed.has_tags and parsed.score_name is None
    assert "1 photos have no label (null: not labelled yet), left out" in parsed.notes
    assert any("1 labels carry a confidence" in n for n in parsed.notes)
    assert lf.unlisted_images(parsed.records, parsed.problems, files, parsed.left_out) == []
    # Without classes, the labels are the class names themselves.
    named = json.dumps({"classes": None, "labels": {"6f1c": "Grey heron"}}).encode()
    parsed = lf.parse_fiftyone(
        {"labels.json": named}.__getitem__, ["labels.json"], ["data/6f1c.jpg"], Columns()
    )
    assert [(r.ref, r.tags) for r in parsed.records] == [("data/6f1c.jpg", ("Grey heron",))]


def _fo_sample(path: str, tags: list[str], **fields: object) -> dict:
    return {"_id": {"$oid": "65a1"}, "filepath": path, "tags": tags, "metadata": None, **fields}


def _fo_label(label: str) -> dict:
    return {"_id": {"$oid": "65b2"}, "_cls": "Classification", "tags": [], "label": label, "confidence": None}


def test_fiftyone_dataset_samples_json() -> None:
    samples = [
        _fo_sample(
            "data/a.jpg",
            ["train", "reviewed"],
            ground_truth=_fo_label("heron"),
            predictions=_fo_label("wren"),
            quality={"_cls": "Regression", "value": 7.5},
            uniqueness=0.4,
            boxes={"_cls": "Detections", "detections": []},
        ),
        _fo_sample(
            "data/b.jpg",
            ["test"],
            ground_truth={
                "_cls": "Classifications",
                "classifications": [_fo_label("wren"), _fo_label("heron")],
            },
            predictions=None,
            quality={"_cls": "Regression", "value": 3},
            uniqueness=0.9,
        ),
        _fo_sample("data/c.jpg", [], ground_truth=None, quality=None),  # not labelled
    ]
    data = json.dumps({"samples": samples}).encode()
    read = {"samples.json": data}.__getitem__
    files = ["metadata.json", "samples.json", "data/a.jpg", "data/b.jpg", "data/c.jpg"]
    assert lf.detect(files, head=lambda f: data if f == "samples.json" else b'{"name": "x"}') == "fiftyone"
    parsed = lf.parse_fiftyone(read, ["samples.json"], files, Columns())
    assert [(r.ref, r.tags, r.score, r.split) for r in parsed.records] == [
        ("data/a.jpg", ("heron",), 7.5, "train"),
        ("data/b.jpg", ("heron", "wren"), 3.0, "test"),
    ]
    assert parsed.score_name == "quality" and parsed.has_tags and parsed.left_out == ["data/c.jpg"]
    notes = " / ".join(parsed.notes)
    assert "object annotation fields not read (each labels a region, not the photo): boxes" in notes
    assert "fields not used: predictions, uniqueness" in notes
    assert "sample tags are not labels, not read: reviewed (1)" in notes
    picked = lf.parse_fiftyone(read, ["samples.json"], files, Columns(tags="predictions", score="uniqueness"))
    assert [(r.tags, r.score) for r in picked.records] == [(("wren",), 0.4), ((), 0.9)]
    with pytest.raises(FormatError, match="no tags field 'label' .label and number fields: ground_truth"):
        lf.parse_fiftyone(read, ["samples.json"], files, Columns(tags="label"))
    two = json.dumps({"samples": [_fo_sample("a.jpg", [], mine=_fo_label("x"), theirs=_fo_label("y"))]})
    with pytest.raises(FormatError, match=r"several classification fields \(mine, theirs\): pick one"):
        lf.parse_fiftyone({"s.json": two.encode()}.__getitem__, ["s.json"], [], Columns())


def test_json_objects_that_are_no_label_studio_export_say_what_they_are() -> None:
    manifest = json.dumps({"type": "eta.core.datasets.LabeledImageDataset", "index": []}).encode()
    assert lf.detect(["manifest.json", "data/a.jpg"], head=lambda f: manifest) == "fiftyone"
    with pytest.raises(
        FormatError, match="a FiftyOneImageLabelsDataset, which lightbox does not read: export"
    ):
        lf.parse_fiftyone({"manifest.json": manifest}.__getitem__, ["manifest.json"], [], Columns())
    coco = json.dumps({"images": [], "annotations": [], "categories": []}).encode()
    assert lf.detect(["instances.json", "a.jpg"], head=lambda f: coco) == "coco"  # tests/unit/test_coco.py
    with pytest.raises(
        FormatError, match="not an object: it looks like COCO, whose annotations label regions"
    ):
        lf.parse_labelstudio(coco, "instances.json", Roots(export_dir="/e"), Columns())


# --- CelebA's attribute list and AVA's vote counts --------------------------------------------------------


_CELEBA = b"3\nBald Bangs Smiling \n000001.jpg -1  1  1\n000002.jpg  1 -1 -1\n000003.jpg -1 -1  2\n"
_AVA = b"1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n2 953958 10 7 15 26 26 21 10 8 1 2 15 0 1396\n"


def test_celeba_and_ava_lists_are_told_by_their_content() -> None:
    # One bad row among many does not hide the format (it is that row's problem).
    celeba = _CELEBA + b"".join(f"00000{i}.jpg 1 1 -1\n".encode() for i in range(4, 8))
    heads = {
        "Anno/list_attr_celeba.txt": celeba,
        "AVA_dataset/AVA.txt": _AVA,
        "readme.txt": b"CelebA 2015\n",
    }
    head = heads.__getitem__
    assert lf.detect(["readme.txt", "Anno/list_attr_celeba.txt", "Img/a/000001.jpg"], head=head) == "celeba"
    assert lf.detect(["AVA_dataset/AVA.txt", "images/953619.jpg"], head=head) == "ava"
    assert lf.detect(["AVA.txt"], source_is_file=True, head=lambda f: _AVA) == "ava"
    assert lf.detect(["attrs.txt"], source_is_file=True, head=lambda f: celeba) == "celeba"
    # Named as CelebA's and AVA's files are, but holding something else: not taken for them.
    with pytest.raises(FormatError, match="'AVA.txt' is not a labels file lightbox reads: a table"):
        lf.detect(["AVA.txt"], source_is_file=True, head=lambda f: b"1 953619 0 1 5\n")
    assert lf.sniff("list_attr_celeba.txt", b"2\nBald Bangs\n000001.jpg -1 yes\n") is None
    # A head cut inside a line is read up to its last whole line.
    assert lf.sniff("AVA.txt", (_AVA * 4000)[: lf.SNIFF_BYTES]) == "ava"


def test_celeba_attributes_are_one_hot_tags_and_its_partition_the_splits() -> None:
    parsed = lf.parse_celeba(_CELEBA, "Anno/list_attr_celeba.txt", Columns(), b"000001.jpg 0\n000002.jpg 2\n")
    assert [(r.ref, r.tags, r.split) for r in parsed.records] == [
        ("Anno/000001.jpg", ("Bangs", "Smiling"), "train"),
        ("Anno/000002.jpg", ("Bald",), "test"),
    ]
    assert [(p.origin, p.reason) for p in parsed.problems] == [
        ("Anno/000003.jpg", "Smiling is '2', not 0 or 1")
    ]
    assert parsed.has_tags and parsed.score_name is None and parsed.format == "celeba"
    assert parsed.notes[0] == (
        "tags from 3 attributes (Bald, Bangs, Smiling): a photo has those marked 1 "
        "(keep some with --tags-column A,B,...)"
    )
    short = lf.parse_celeba(b"5\nBald Bangs\n000001.jpg -1\n000002.jpg 1 1\n", "attrs.txt", Columns())
    assert [r.ref for r in short.records] == ["000002.jpg"]
    assert short.problems[0].reason == "line 3 has 1 flags, the header 2"
    assert "attrs.txt declares 5 photos and lists 2" in short.notes
    with pytest.raises(FormatError, match="list_eval_partition.txt: '000001.jpg train' is not 'name 0|1|2'"):
        lf.parse_celeba(_CELEBA, "attrs.txt", Columns(), b"000001.jpg train\n")
    # A few attributes kept as tags, by name; a score column has nothing to name.
    kept = lf.parse_celeba(_CELEBA, "attrs.txt", Columns(tags="Bald, Smiling"))
    assert [(r.ref, r.tags) for r in kept.records] == [
        ("000001.jpg", ("Smiling",)),
        ("000002.jpg", ("Bald",)),
    ]
    with pytest.raises(
        FormatError, match="no attribute 'Young' for --tags-column .attributes: Bald Bangs Smiling"
    ):
        lf.parse_celeba(_CELEBA, "attrs.txt", Columns(tags="Young"))
    with pytest.raises(FormatError, match="--score-column does not apply here .the attributes are the tags"):
        lf.parse_celeba(_CELEBA, "attrs.txt", Columns(score="Smiling"))


def test_ava_scores_are_the_mean_vote_on_its_1_to_10_scale() -> None:
    parsed = lf.parse_ava(
        _AVA + b"3 953980 0 0 0 0 0 0 0 0 0 0 0 0 1396\n4 953981 1 2\n", "AVA.txt", Columns()
    )
    assert [r.ref for r in parsed.records] == ["953619.jpg", "953958.jpg"]
    # 953619: (1*0 + 2*1 + 3*5 + 4*17 + 5*38 + 6*36 + 7*15 + 8*6 + 9*5 + 10*1) / 124 votes
    assert parsed.records[0].score == pytest.approx(699 / 124)
    assert parsed.records[1].score == pytest.approx(592 / 126)
    assert [(p.origin, p.reason) for p in parsed.problems] == [
        ("953980.jpg", "no votes"),
        ("AVA.txt:4", "line 4 is not index, image id, 10 vote counts, 2 tag ids and a challenge id"),
    ]
    assert parsed.score_name == "mean_vote" and parsed.score_range == (1.0, 10.0) and not parsed.has_tags


# --- Excel workbooks -----------------------------------------------------------------------------------


def _workbook(sheets: dict[str, list[list[object]]]) -> bytes:
    import io

    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def test_an_excel_workbook_reads_like_its_csv() -> None:
    data = _workbook(
        {
            "Notes": [["shot in May"], ["by ann"]],
            "Labels": [
                [],  # a title row left blank
                ["Image ID", "Rating", "Tags", "Taken"],
                [1000, 4.5, "heron|wren", None],
                [1001, 3, None, None],
                [None, None, None, None],
                ["1002.jpg", "N/A", "kestrel", None],
            ],
        }
    )
    assert lf.detect(["labels.xlsx"], source_is_file=True, head=lambda f: data) == "imagefolder"
    parsed = lf.parse_imagefolder(
        ["labels.xlsx"], {"labels.xlsx": data}.__getitem__, Columns(), metas=[("labels.xlsx", None)]
    )
    assert [(r.ref, r.score, r.tags) for r in parsed.records] == [
        ("1000", 4.5, ("heron", "wren")),  # an id typed as a number is a name, not 1000.0
        ("1001", 3.0, ()),
        ("1002.jpg", None, ("kestrel",)),
    ]
    assert not parsed.problems and parsed.score_name == "Rating" and parsed.has_tags
    assert "labels.xlsx: read the sheet 'Labels' of 2" in parsed.notes
    assert "columns not used (unknown): Taken" in parsed.notes


def test_spreadsheets_lightbox_cannot_open_say_how_to_save_them() -> None:
    with pytest.raises(FormatError, match="'labels.xls': lightbox reads Excel .xlsx workbooks and CSV"):
        lf.detect(["labels.xls"], source_is_file=True, head=lambda f: b"\xd0\xcf\x11\xe0")
    read = {"labels.xlsx": b"file_name,score\na.jpg,1\n"}.__getitem__
    with pytest.raises(
        FormatError, match="labels.xlsx is not an Excel workbook lightbox can read .File is not"
    ):
        lf.parse_imagefolder(["labels.xlsx"], read, Columns(), metas=[("labels.xlsx", None)])


def test_an_entity_bomb_in_a_workbook_is_refused_not_expanded() -> None:
    import io
    import zipfile

    good = zipfile.ZipFile(io.BytesIO(_workbook({"Labels": [["file_name", "score"], ["a.jpg", 1]]})))
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as bad:
        for item in good.infolist():
            data = good.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(b"<worksheet", f"<!DOCTYPE worksheet [{entities}]><worksheet".encode(), 1)
                data = data.replace(b"<v>1</v>", b"<v>&i;</v>")
            bad.writestr(item, data)
    read = {"labels.xlsx": buf.getvalue()}.__getitem__
    with pytest.raises(FormatError, match="labels.xlsx is not an Excel workbook lightbox can read .limit on"):
        lf.parse_imagefolder(["labels.xlsx"], read, Columns(), metas=[("labels.xlsx", None)])


# --- Hugging Face parquet ---------------------------------------------------------------------------------


def _hf_parquet(columns: dict[str, list], features: dict | None = None) -> bytes:
    """A parquet file as ``datasets`` writes it: the Image feature a struct of bytes and path, the
    features (ClassLabel names) in the schema's ``huggingface`` metadata."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    if features is not None:
        info = json.dumps({"info": {"features": features}}).encode()
        table = table.replace_schema_metadata({b"huggingface": info})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _parse_parquet(shards: dict[str, bytes], columns: Columns | None = None) -> tuple[lf.Parsed, dict]:
    import io

    stored: dict[str, bytes] = {}

    def store(name: str, data: bytes) -> str:
        stored[f"/scratch/{name}"] = data
        return f"/scratch/{name}"

    parsed = lf.parse_parquet(sorted(shards), lambda f: io.BytesIO(shards[f]), store, columns or Columns())
    return parsed, stored


def test_hugging_face_parquet_with_embedded_images_and_class_labels() -> None:
    images = [{"bytes": f"jpeg{i}".encode(), "path": f"IMG_{i}.jpg"} for i in range(4)]
    images[3] = {"bytes": b"png3", "path": None}
    features = {
        "image": {"_type": "Image"},
        "labels": {
            "feature": {"names": ["heron", "kestrel", "wren"], "_type": "ClassLabel"},
            "_type": "List",
        },
        "rating": {"dtype": "float32", "_type": "Value"},
        "caption": {"dtype": "string", "_type": "Value"},
    }
    shard = _hf_parquet(
        {
            "image": images,
            "labels": [[0, 2], [], None, [1]],
            "rating": [4.5, 3.0, None, 2.0],
            "caption": ["a", "b", "c", "d"],
        },
        features,
    )
    files = ["README.md", "data/train-00000-of-00001.parquet"]
    assert lf.detect(files, head=lambda f: b"# x") == "parquet"
    assert lf.detect(["x.parquet"], source_is_file=True, head=lambda f: b"PAR1") == "parquet"
    parsed, stored = _parse_parquet({"data/train-00000-of-00001.parquet": shard})
    assert [(r.ref, r.origin, r.tags, r.score, r.split) for r in parsed.records] == [
        (
            "/scratch/data_train-00000-of-00001.parquet/0000000-IMG_0.jpg",
            "data/train-00000-of-00001.parquet row 0 (IMG_0.jpg)",
            ("heron", "wren"),
            4.5,
            "train",
        ),
        (
            "/scratch/data_train-00000-of-00001.parquet/0000001-IMG_1.jpg",
            "data/train-00000-of-00001.parquet row 1 (IMG_1.jpg)",
            (),
            3.0,
            "train",
        ),
        (
            "/scratch/data_train-00000-of-00001.parquet/0000003-image",
            "data/train-00000-of-00001.parquet row 3",
            ("kestrel",),
            2.0,
            "train",
        ),
    ]
    assert stored["/scratch/data_train-00000-of-00001.parquet/0000001-IMG_1.jpg"] == b"jpeg1"
    assert len(stored) == 3  # the unlabelled row's image is not kept
    assert parsed.score_name == "rating" and parsed.has_tags and parsed.format == "parquet"
    assert "1 rows have no label (a ClassLabel's -1, or nothing), left out" in parsed.notes
    assert "data/train-00000-of-00001.parquet: columns not used: caption" in parsed.notes


def test_hugging_face_parquet_without_its_metadata_and_bad_rows() -> None:
    image = {"bytes": b"x", "path": "a.jpg"}
    shard = _hf_parquet({"img": [image] * 4, "label": [0, 1, -1, 7]})  # no datasets metadata
    parsed, _ = _parse_parquet({"test.parquet": shard})
    assert [(r.tags, r.split) for r in parsed.records] == [
        (("0",), "test"),
        (("1",), "test"),
        (("7",), "test"),
    ]
    assert any("'label' holds class indices without their names" in n for n in parsed.notes)
    named = _hf_parquet(
        {"image": [image] * 2, "label": [0, 7]},
        {"image": {"_type": "Image"}, "label": {"names": ["a", "b"], "_type": "ClassLabel"}},
    )
    parsed, _ = _parse_parquet({"train.parquet": named})
    assert [r.tags for r in parsed.records] == [("a",)]
    assert parsed.problems[0].origin == "train.parquet row 1 (a.jpg)"
    assert parsed.problems[0].reason == "class index 7 is not one of the 2 classes"
    with pytest.raises(
        FormatError, match="no image column .the Image feature: bytes and path.: columns name"
    ):
        _parse_parquet({"t.parquet": _hf_parquet({"name": ["a.jpg"], "label": [1]})})
    with pytest.raises(FormatError, match="t.parquet: no column 'stars' .columns: image, label"):
        _parse_parquet({"t.parquet": named}, Columns(score="stars"))
    with pytest.raises(FormatError, match="t.parquet is not a parquet file lightbox can read"):
        _parse_parquet({"t.parquet": b"PAR1 not really"})


def test_json_cells_written_without_quotes_are_read_by_their_brackets() -> None:
    # An older Label Studio converter writes a control's JSON bare, commas and all.
    header = "image,id,quality,tags,annotator,annotation_id,created_at,updated_at,lead_time\n"
    lines = [
        '/data/upload/1/a.jpg,1,[{"rating": 4}],{"choices": ["Cat", "Indoor, warm"]},a@x,1,t,t,2.0',
        '/data/upload/1/b.jpg,2,[{"rating": 2}],Dog,"b, the annotator",2,t,t,1.5',
    ]
    data = (header + "\n".join(lines) + "\n").encode()
    assert lf.is_labelstudio_table("project-1.csv", data)
    parsed = lf.parse_labelstudio_table(
        data, "project-1.csv", Roots(export_dir="/e", media_root="/m"), Columns()
    )
    assert {(r.ref, r.score, r.tags) for r in parsed.records} == {
        ("/m/upload/1/a.jpg", 4.0, ("Cat", "Indoor, warm")),
        ("/m/upload/1/b.jpg", 2.0, ("Dog",)),
    }
    assert "project-1.csv: 1 rows hold JSON cells without quotes, read by their brackets" in parsed.notes
    # A labels table's bare JSON list too; a row whose extra fields are no JSON stays a problem to quote.
    table = (
        b'file_name,score,tags\na.jpg,3,["sunset", "beach"]\nb.jpg,2,sunset,beach\nc.jpg,1,{not json, x}\n'
    )
    parsed = lf.parse_imagefolder(["metadata.csv"], {"metadata.csv": table}.__getitem__, Columns())
    assert [(r.ref, r.tags) for r in parsed.records] == [("a.jpg", ("beach", "sunset"))]
    assert [p.reason[:40] for p in parsed.problems] == [
        "line 3 has 4 fields, the header 3: quote",
        "line 4 has 4 fields, the header 3: quote",
    ]
    assert "metadata.csv: 1 rows hold JSON cells without quotes, read by their brackets" in parsed.notes


def test_an_excel_header_below_a_merged_group_row_and_percentages_as_shown() -> None:
    """A group row ("Photo" over the file column, "Labels" merged over the rest) above the real header
    is skipped; a score formatted as a percentage reads as the sheet shows it (62%), as its CSV would."""
    import io

    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Photo", "Labels", None])
    sheet.merge_cells("B1:C1")
    sheet.append(["file_name", "score", "tags"])
    sheet.append(["a.jpg", 0.62, "heron"])
    sheet["B3"].number_format = "0%"
    sheet.append(["b.jpg", 0.5, "wren"])
    buf = io.BytesIO()
    book.save(buf)
    parsed = lf.parse_imagefolder(
        ["labels.xlsx"], {"labels.xlsx": buf.getvalue()}.__getitem__, Columns(), metas=[("labels.xlsx", None)]
    )
    assert [(r.ref, r.score, r.tags) for r in parsed.records] == [
        ("a.jpg", 62.0, ("heron",)),
        ("b.jpg", 0.5, ("wren",)),
    ]


def test_parquet_rows_are_read_a_few_megabytes_at_a_time() -> None:
    """Shards of camera photos: a batch holds about 32 MB of rows, not 64 rows whatever their size."""
    import io
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lightbox.label_formats.hf_parquet import _batch_rows

    def rows_per_batch(row_bytes: int, rows: int) -> int:
        buf = io.BytesIO()
        blobs = [os.urandom(row_bytes) for _ in range(rows)]  # incompressible, as JPEGs are
        pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b in blobs]}), buf)
        return _batch_rows(pq.ParquetFile(io.BytesIO(buf.getvalue())))

    assert rows_per_batch(1_000, 100) == 64
    assert rows_per_batch(4_000_000, 10) in (7, 8)  # about 32 MB of 4 MB rows (and their overhead)
    assert rows_per_batch(20_000_000, 2) == 1


def test_an_image_url_column_is_found_by_its_key_and_a_colon_in_a_name_is_no_url() -> None:
    """URLs in the file column: the longest ending of the key that is a file of the source (the same
    name in two folders stays apart), an s3:// URI not found is read from S3, another scheme is refused
    for its row; a name with a colon (a Mac's ``10:42.jpg``) is a file name as before."""
    tree = {
        "metadata.csv": (
            b"image_url,labels\n"
            b"https://acme.s3.amazonaws.com/shoot/day1/IMG_1.jpg?X-Amz-Signature=ab,cat\n"
            b"https://acme.s3.amazonaws.com/shoot/day2/IMG_1.jpg,dog\n"
            b"s3://acme/shoot/day3/IMG_1.jpg,cat\n"
            b"ftp://old.example/IMG_9.jpg,cat\n"
            b"shot at 10:42.jpg,dog\n"
        ),
        "day1/IMG_1.jpg": b"",
        "day2/IMG_1.jpg": b"",
        "shot at 10:42.jpg": b"",
    }
    files, read = _files(tree)
    parsed = lf.parse_imagefolder(files, read, Columns(tags="labels"))
    assert [r.ref for r in parsed.records] == [
        "day1/IMG_1.jpg",
        "day2/IMG_1.jpg",
        "s3://acme/shoot/day3/IMG_1.jpg",
        "shot at 10:42.jpg",
    ]
    assert parsed.records[0].origin == "https://acme.s3.amazonaws.com/shoot/day1/IMG_1.jpg"
    assert [p.reason for p in parsed.problems] == [
        "'ftp://old.example/IMG_9.jpg' is not an s3://, gs://, https:// or Azure ML datastore URI"
    ]


def test_label_studio_tasks_nobody_labelled_are_left_out_of_json_min_and_csv_exports() -> None:
    """Label Studio's JSON_MIN and CSV exports write a task without annotations as a row of its data
    with annotation_id null (empty in the CSV) and no control: it had been imported as a photo with no
    tag, a negative of every tag. Skipped tasks of Label Studio 0.x ("completions", skipped) too."""
    unlabelled = {
        "image": "/data/upload/1/p9.jpg",
        "id": 9,
        "annotator": None,
        "annotation_id": None,
        "created_at": None,
        "updated_at": None,
        "lead_time": None,
    }
    rows = [_min_row(1, quality=[{"rating": 4}], tags="Food"), _min_row(2, tags="Indoor"), unlabelled]
    parsed = lf.parse_labelstudio(json.dumps(rows).encode(), "min.json", Roots(export_dir="/e"), Columns())
    assert sorted(r.ref for r in parsed.records) == ["/e/upload/1/p1.jpg", "/e/upload/1/p2.jpg"]
    assert "1 tasks without a submitted annotation" in " ".join(parsed.notes)

    csv_text = (
        "image,id,tags,annotator,annotation_id,created_at,updated_at,lead_time\n"
        "/data/upload/1/p1.jpg,1,Food,ann@example.com,11,2026-01-01,2026-01-01,2.5\n"
        "/data/upload/1/p9.jpg,9,,,,,,\n"
    )
    parsed = lf.parse_labelstudio_table(csv_text.encode(), "p.csv", Roots(export_dir="/e"), Columns())
    assert [r.ref for r in parsed.records] == ["/e/upload/1/p1.jpg"]

    old = [
        {"id": 1, "data": {"image": "a.jpg"}, "completions": [{"id": 11, "result": [_choices("sky")]}]},
        {"id": 2, "data": {"image": "b.jpg"}, "completions": [{"id": 12, "result": [], "skipped": True}]},
    ]
    parsed = lf.parse_labelstudio(json.dumps(old).encode(), "old.json", Roots(export_dir="/e"), Columns())
    assert [r.ref for r in parsed.records] == ["/e/a.jpg"]
    assert "1 tasks without a submitted annotation" in " ".join(parsed.notes)


def test_a_windows_label_studio_local_files_path_uses_backslashes_as_folders() -> None:
    """Label Studio on Windows writes ?d=shoot%5Cday1%5Cp0.jpg (issues #6173, #9190)."""
    roots = Roots(export_dir="/e", local_files_root="/photos")
    assert (
        lf.resolve_ls_ref("/data/local-files/?d=shoot%5Cday1%5Cp0.jpg", roots) == "/photos/shoot/day1/p0.jpg"
    )


def test_a_table_with_an_id_and_a_url_names_its_photos_by_id() -> None:
    """Google Landmarks' train.csv (id,url,landmark_id): the photos were downloaded under their ids, the
    URL is where they came from."""
    tree = {
        "train.csv": b"id,url,landmark_id\n6e158a47eb2ca3f6,https://upload.wikimedia.org/a/b/Foo.jpg,142820\n",
        "train/6/e/1/6e158a47eb2ca3f6.jpg": b"",
    }
    files, read = _files(tree)
    parsed = lf.parse_imagefolder(files, read, Columns(tags="landmark_id"), metas=[("train.csv", None)])
    assert [r.ref for r in parsed.records] == ["6e158a47eb2ca3f6"]  # matched by name later
