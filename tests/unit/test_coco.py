"""COCO files whose annotations label the photo (image classification): Azure Machine Learning data
labeling's COCO export, a multi-label project's, a split per folder as Roboflow writes them; boxes and
polygons are only counted."""

from __future__ import annotations

import json

import pytest

from lightbox import label_formats as lf
from lightbox.label_formats import Columns, FormatError

pytestmark = pytest.mark.unit

STORE = "AmlDatastore://workspaceblobstore/UI/2024-03-11_101412_UTC"


def coco(images: list[dict], annotations: list[dict], categories: dict[int, str]) -> bytes:
    return json.dumps(
        {
            "info": {"description": "Labels exported from Azure Machine Learning", "year": 2024},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": ""} for i, n in categories.items()],
        },
        indent=2,
    ).encode()


def image(i: int, name: str) -> dict:
    return {
        "id": i,
        "width": 640,
        "height": 480,
        "file_name": f"UI/2024-03-11_101412_UTC/{name}",
        "coco_url": f"{STORE}/{name}",
        "absolute_url": f"https://acme.blob.core.windows.net/azureml-blobstore/UI/{name}",
        "date_captured": "2024-03-11T10:20:00Z",
    }


def reader(files: dict[str, bytes]):
    return files.__getitem__


def test_image_level_annotations_are_tags_and_photos_found_by_their_datastore_path() -> None:
    images = [
        image(1, "birds/IMG_1.jpg"),
        image(2, "birds/IMG_2.jpg"),
        image(3, "IMG_3.jpg"),
        image(4, "x.jpg"),
    ]
    annotations = [
        {"id": 1, "category_id": 1, "image_id": 1, "area": 0.0},
        {"id": 2, "category_id": 2, "image_id": 1, "area": 0.0},  # multi-label: two classes
        {"id": 3, "category_id": 2, "image_id": 2, "area": 0.0},
        {"id": 4, "category_id": 1, "image_id": 3, "bbox": [10, 20, 30, 40], "area": 1200.0},  # a box
        {"id": 5, "category_id": 9, "image_id": 2},  # no such category
    ]
    files = {"export/labels.json": coco(images, annotations, {1: "Heron", 2: "Egret"})}
    present = ["export/birds/IMG_1.jpg", "export/birds/IMG_2.jpg", "export/IMG_3.jpg", "export/x.jpg"]
    parsed = lf.parse_coco(reader(files), ["export/labels.json"], present, Columns())
    assert [(r.ref, r.tags) for r in parsed.records] == [
        ("export/birds/IMG_1.jpg", ("Egret", "Heron")),
        ("export/birds/IMG_2.jpg", ("Egret",)),
    ]
    assert parsed.records[0].origin == "UI/2024-03-11_101412_UTC/birds/IMG_1.jpg"
    assert sorted(parsed.left_out) == ["export/IMG_3.jpg", "export/x.jpg"]  # only a box; no label
    assert [p.reason for p in parsed.problems] == ["category 9 is not in the file's categories"]
    notes = " / ".join(parsed.notes)
    assert "1 boxes or polygons not read" in notes and "2 images have no class" in notes


def test_a_split_per_folder_and_tags_column_keeps_some_classes() -> None:
    files = {
        f"{split}/_annotations.coco.json": coco(
            [{"id": 0, "file_name": f"{split}_a.jpg", "width": 9, "height": 9}],
            [{"id": 0, "image_id": 0, "category_id": c} for c in (0, 1)],
            {0: "cats-dogs", 1: "cat"} if split != "test" else {0: "cats-dogs", 1: "dog"},
        )
        for split in ("train", "valid", "test")
    }
    names = sorted(files)
    present = ["train/train_a.jpg", "valid/valid_a.jpg", "test/test_a.jpg"]
    parsed = lf.parse_coco(reader(files), names, present, Columns(tags="cat,dog"))
    assert sorted((r.ref, r.split, r.tags) for r in parsed.records) == [
        ("test/test_a.jpg", "test", ("dog",)),
        ("train/train_a.jpg", "train", ("cat",)),
        ("valid/valid_a.jpg", "validation", ("cat",)),
    ]


def test_a_detection_coco_file_is_refused_saying_why_and_a_score_column_does_not_apply() -> None:
    images = [image(1, "a.jpg")]
    boxes = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "segmentation": []}]
    files = {"instances_train2017.json": coco(images, boxes, {1: "person"})}
    with pytest.raises(
        FormatError, match="1 boxes or polygons and no image classification label.*region, not the photo"
    ):
        lf.parse_coco(reader(files), ["instances_train2017.json"], ["a.jpg"], Columns())
    with pytest.raises(FormatError, match="--score-column does not apply"):
        lf.parse_coco(reader(files), ["instances_train2017.json"], ["a.jpg"], Columns(score="stars"))
    with pytest.raises(FormatError, match="not a COCO file"):
        lf.parse_coco(reader({"x.json": b"[1, 2]"}), ["x.json"], [], Columns())


def test_coco_is_told_by_its_first_bytes_and_a_label_studio_list_is_not() -> None:
    head = coco([image(1, "a.jpg")], [], {1: "a"})
    assert lf.sniff("labels.json", head) == "coco"
    assert lf.sniff("_annotations.coco.json", json.dumps({"images": [{"id": 1}]}).encode()) == "coco"
    assert lf.sniff("export.json", b'[{"id": 1, "data": {"image": "a.jpg"}}]') is None
    assert lf.detect(["labels.json", "a.jpg"], head=lambda f: head) == "coco"
    assert "coco" in lf.FORMATS
