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
        lf.parse_score_cell("nan")
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
        {"file_name": "a.jpg", "score": 0.6},
        {"file_name": "b.jpg", "score": "high"},
        {"file_name": "../outside.jpg", "score": 1},
        {"score": 1},
    ]
    data = ("\n".join(json.dumps(r) for r in lines) + "\n{broken\n").encode()
    parsed = lf.parse_imagefolder(["metadata.jsonl"], {"metadata.jsonl": data}.__getitem__, Columns())
    assert [r.ref for r in parsed.records] == ["a.jpg"]
    reasons = {p.origin: p.reason for p in parsed.problems}
    assert reasons["a.jpg"] == "duplicate file name: listed twice in the metadata"
    assert reasons["b.jpg"] == "score 'high' is not a number"
    assert "outside the source folder" in reasons["../outside.jpg"]
    assert reasons["metadata.jsonl:5"] == "no file_name"
    assert reasons["metadata.jsonl:6"].startswith("line 6 is not JSON")


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
    assert "web URL" in reasons and reasons.count("no (uncancelled) annotation") == 2


def test_labelstudio_json_min_one_row_per_annotation() -> None:
    rows = [
        {
            "image": "/data/upload/1/a.jpg",
            "id": 1,
            "tags": "sky",
            "quality": 4,
            "annotator": 1,
            "annotation_id": 1,
            "created_at": "2026-01-01",
            "lead_time": 3.2,
        },
        {
            "image": "/data/upload/1/a.jpg",
            "id": 1,
            "tags": {"choices": ["sky", "sea"]},
            "quality": 2,
            "annotator": 2,
            "annotation_id": 2,
            "created_at": "2026-01-01",
            "lead_time": 1.0,
        },
        {
            "image": "/data/upload/1/b.jpg",
            "id": 2,
            "tags": {"choices": ["sea", "sand"]},
            "quality": 5,
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
    assert {p.origin for p in parsed.problems} == {"dog/readme.txt", "c.jpg"}


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
