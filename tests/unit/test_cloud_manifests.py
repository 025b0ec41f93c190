"""Parsing the cloud labelling services' files (no image is read): SageMaker Ground Truth output
manifests (and Rekognition Custom Labels'), Vertex AI image classification JSON lines and CSV, and
how a bucket key finds its photo in a synced folder."""

from __future__ import annotations

import json

import pytest

from lightbox import label_formats as lf
from lightbox.label_formats import Columns, FormatError
from lightbox.label_formats.uris import bucket_ref

pytestmark = pytest.mark.unit


def reader(files: dict[str, str]):  # noqa: ANN201 - the read callable the parsers take
    return lambda name: files[name].encode()


def lines(*rows: dict) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def gt_single(ref: str, job: str, index: int, name: str, **meta: object) -> dict:
    return {
        "source-ref": ref,
        job: index,
        f"{job}-metadata": {
            "class-name": name,
            "confidence": 0.91,
            "type": "groundtruth/image-classification",
            "job-name": f"labeling-job/{job}",
            "human-annotated": "yes",
            "creation-date": "2026-11-02T10:11:12.000",
            **meta,
        },
    }


def test_ground_truth_single_and_multi_label_jobs_and_rekognition_attributes() -> None:
    multi = {
        "source-ref": "s3://shots/in/b.jpg",
        "scene": [0, 2],
        "scene-metadata": {
            "class-map": {"0": "beach", "2": "sunset"},
            "confidence-map": {"0": 0.8, "2": 0.7},
            "type": "groundtruth/image-classification-multilabel",
            "job-name": "labeling-job/scene",
            "human-annotated": "yes",
        },
        "boxes": {"annotations": [{"class_id": 0, "left": 1, "top": 2, "width": 3, "height": 4}]},
        "boxes-metadata": {"type": "groundtruth/object-detection", "class-map": {"0": "dog"}},
    }
    # Rekognition Custom Labels: one attribute per label on a photo, their classes together.
    two = gt_single("s3://shots/in/c.jpg", "rk_Mountain", 1, "Mountain") | gt_single(
        "s3://shots/in/c.jpg", "rk_Lake", 1, "Lake"
    )
    failed = gt_single("s3://shots/in/d.jpg", "scene", 0, "beach", **{"failure-reason": "timeout"})
    files = {
        "out/train.manifest": lines(gt_single("s3://shots/in/a.jpg", "scene", 1, "snow"), multi, two, failed)
    }
    parsed = lf.parse_groundtruth(reader(files), ["out/train.manifest"], ["in/a.jpg", "in/b.jpg"], Columns())
    by_origin = {r.origin: r for r in parsed.records}
    assert parsed.format == "groundtruth" and set(by_origin) == {
        "s3://shots/in/a.jpg",
        "s3://shots/in/b.jpg",
        "s3://shots/in/c.jpg",
    }
    assert (
        by_origin["s3://shots/in/a.jpg"].tags == ("snow",)
        and by_origin["s3://shots/in/a.jpg"].ref == "in/a.jpg"
    )
    assert by_origin["s3://shots/in/b.jpg"].tags == ("beach", "sunset")  # the boxes' dog is no tag
    assert by_origin["s3://shots/in/c.jpg"].tags == ("Lake", "Mountain")
    assert by_origin["s3://shots/in/c.jpg"].ref == "s3://shots/in/c.jpg"  # not in the folder: read from S3
    assert {r.split for r in parsed.records} == {"train"}  # the manifest's name
    assert parsed.left_out == ["s3://shots/in/d.jpg"]
    notes = " ".join(parsed.notes)
    assert "boxes (groundtruth/object-detection)" in notes and "1 labels failed" in notes


def test_ground_truth_attributes_picked_and_a_score_attribute() -> None:
    row = gt_single("s3://b/x/1.jpg", "quality", 3, "good") | {"stars": 4}
    other = gt_single("s3://b/x/2.jpg", "quality", 1, "poor") | {"stars": {"rating": 2}}
    files = {"output.manifest": lines(row, other)}
    parsed = lf.parse_groundtruth(reader(files), ["output.manifest"], [], Columns(score="stars"))
    assert [(r.score, r.tags) for r in parsed.records] == [(4.0, ("good",)), (2.0, ("poor",))]
    assert parsed.score_name == "stars"
    with pytest.raises(FormatError, match="no label attribute kind .*its attributes: quality"):
        lf.parse_groundtruth(reader(files), ["output.manifest"], [], Columns(tags="kind"))
    with pytest.raises(FormatError, match="no line has a number in 'rating'"):
        lf.parse_groundtruth(reader(files), ["output.manifest"], [], Columns(score="rating"))


def test_ground_truth_refusals_say_what_the_manifest_holds() -> None:
    boxes_only = {
        "source-ref": "s3://b/1.jpg",
        "cars": {"annotations": []},
        "cars-metadata": {"type": "groundtruth/object-detection", "class-map": {"0": "car"}},
    }
    with pytest.raises(FormatError, match="no image classification label, only cars .*region"):
        lf.parse_groundtruth(reader({"m.manifest": lines(boxes_only)}), ["m.manifest"], [], Columns())
    bad = {
        "m.manifest": '{"source": "a caption"}\nnot json\n' + lines(gt_single("s3://b/1.jpg", "j", 0, "x"))
    }
    parsed = lf.parse_groundtruth(reader(bad), ["m.manifest"], [], Columns())
    assert [p.reason for p in parsed.problems] == [
        "labels text (source), not an image",
        "not a JSON line (Expecting value)",
    ]
    assert [p.origin for p in parsed.problems] == ["m.manifest:1", "m.manifest:2"] and len(
        parsed.records
    ) == 1
    with pytest.raises(FormatError, match="does not apply here"):
        lf.parse_groundtruth(reader(bad), ["m.manifest"], [], Columns(split="split"))


def test_vertex_json_lines_single_and_multi_label_with_ml_use() -> None:
    use = "aiplatform.googleapis.com/ml_use"
    rows = [
        {"imageGcsUri": "gs://bk/fl/a.jpg", "classificationAnnotation": {"displayName": "daisy"}},
        {
            "imageGcsUri": "gs://bk/fl/b.jpg",
            "classificationAnnotations": [{"displayName": "rose"}, {"displayName": "full_bloom"}],
            "dataItemResourceLabels": {use: "test"},
        },
        {"imageGcsUri": "gs://bk/fl/c.jpg", "dataItemResourceLabels": {use: "training"}},  # not labelled yet
        {
            "imageGcsUri": "gs://bk/fl/d.jpg",
            "classificationAnnotation": {"displayName": "x"},
            "dataItemResourceLabels": {use: "holdout"},
        },
        {
            "imageGcsUri": "gs://bk/fl/e.jpg",
            "boundingBoxAnnotations": [{"displayName": "bee", "xMin": 0.1}],
            "classificationAnnotation": {"displayName": "daisy"},
            "dataItemResourceLabels": {use: "validation"},
        },
    ]
    parsed = lf.parse_vertex(reader({"export.jsonl": lines(*rows)}), ["export.jsonl"], [], Columns())
    assert [(r.ref, r.tags, r.split) for r in parsed.records] == [
        ("fl/a.jpg", ("daisy",), None),
        ("fl/b.jpg", ("full_bloom", "rose"), "test"),
        ("fl/e.jpg", ("daisy",), "validation"),
    ]
    assert parsed.left_out == ["fl/c.jpg"] and "holdout" in parsed.problems[0].reason
    assert "1 bounding boxes not read" in " ".join(parsed.notes)


def test_vertex_csv_with_and_without_ml_use() -> None:
    text = "TRAINING,gs://bk/fl/a.jpg,daisy\ngs://bk/fl/b.jpg,rose,full_bloom\n\ntest,gs://bk/fl/c.jpg\nUNASSIGNED,gs://bk/fl/d.jpg,rose\n"
    parsed = lf.parse_vertex(reader({"import.csv": text}), ["import.csv"], ["fl/a.jpg"], Columns())
    assert [(r.ref, r.tags, r.split) for r in parsed.records] == [
        ("fl/a.jpg", ("daisy",), "train"),
        ("fl/b.jpg", ("full_bloom", "rose"), None),
        ("fl/d.jpg", ("rose",), None),
    ]
    assert parsed.left_out == ["fl/c.jpg"]


def test_a_bucket_key_finds_its_photo_in_a_synced_folder() -> None:
    # `aws s3 sync s3://b/shoot/2026/ ./photos`: the keys below the prefix; cameras repeat IMG_0001.
    present = {"day1/IMG_0001.jpg", "day2/IMG_0001.jpg", "labels/day3/x.jpg"}
    assert bucket_ref("s3://b/shoot/2026/day2/IMG_0001.jpg", "", present) == "day2/IMG_0001.jpg"
    assert bucket_ref("s3://b/p/day3/x.jpg", "labels", present) == "labels/day3/x.jpg"
    assert bucket_ref("s3://b/p/day9/y.jpg", "", present) == "s3://b/p/day9/y.jpg"
    assert bucket_ref("gs://b/p/day9/y.jpg", "", present) == "p/day9/y.jpg"
    assert bucket_ref("https://b.s3.amazonaws.com/day1/IMG_0001.jpg", "", present) == "day1/IMG_0001.jpg"
    assert bucket_ref("pics/z.jpg", "out", present) == "out/pics/z.jpg"
    with pytest.raises(ValueError, match="names a bucket or a folder"):
        bucket_ref("s3://b/", "", present)
    with pytest.raises(ValueError, match="is not an s3://"):
        bucket_ref("ftp://h/x.jpg", "", present)


def test_cloud_files_are_told_by_their_first_line() -> None:
    gt = lines(gt_single("s3://b/1.jpg", "j", 0, "x")).encode()
    vertex = b'{"imageGcsUri": "gs://b/1.jpg", "classificationAnnotation": {"displayName": "x"}}\n'
    assert lf.sniff("output.manifest", gt) == "groundtruth"
    assert lf.sniff("manifest.json", gt) == "groundtruth"
    assert lf.sniff("export.jsonl", vertex) == "vertex"
    assert lf.sniff("import.csv", b"TRAINING,gs://b/1.jpg,daisy\n") == "vertex"
    assert lf.sniff("import.csv", b"gs://b/1.jpg,daisy\n") == "vertex"
    assert lf.sniff("labels.csv", b"file_name,score\n1.jpg,3\n") is None
    assert lf.sniff("metadata.jsonl", b'{"file_name": "1.jpg", "score": 3}\n') is None
    assert lf.detect(["output.manifest", "in/1.jpg"], head=lambda f: gt) == "groundtruth"
    assert lf.detect(["export.jsonl"], source_is_file=True, head=lambda f: vertex) == "vertex"
    assert (
        lf.detect(["labels.csv"], source_is_file=True, head=lambda f: b"file_name,score\n") == "imagefolder"
    )


def test_a_custom_workflows_classes_are_read_and_not_said_unread() -> None:
    row = {
        "source-ref": "s3://b/1.jpg",
        "mood": 0,
        "mood-metadata": {
            "class-name": "calm",
            "type": "acme/mood-workflow",
            "job-name": "labeling-job/mood",
        },
    }
    parsed = lf.parse_groundtruth(reader({"m.manifest": lines(row)}), ["m.manifest"], [], Columns())
    assert [r.tags for r in parsed.records] == [("calm",)]
    assert not any("not read" in n for n in parsed.notes), parsed.notes


def test_automl_vision_csv_splits_in_capitals_and_train_as_vertex_reads_them() -> None:
    """AutoML Vision's legacy CSV and Google's Data Labeling export write TRAIN, VALIDATION, TEST and
    UNASSIGNED (TRAIN had been read as a file name)."""
    text = (
        "TRAIN,gs://bk/fl/a.jpg,daisy\r\nVALIDATION,gs://bk/fl/b.jpg,rose\r\nTEST,gs://bk/fl/c.jpg,rose\r\n"
    )
    assert lf.sniff("all_data.csv", text.encode()) == "vertex"
    parsed = lf.parse_vertex(reader({"all_data.csv": text}), ["all_data.csv"], [], Columns())
    assert [(r.ref, r.split) for r in parsed.records] == [
        ("fl/a.jpg", "train"),
        ("fl/b.jpg", "validation"),
        ("fl/c.jpg", "test"),
    ]


def test_a_ground_truth_multi_label_answer_of_none_of_the_classes_is_a_labelled_negative() -> None:
    """A worker who chose "None of the above" in a multi-label job writes [] and an empty class-map: a
    photo with none of the tags, not an unlabelled one (losing those biases every tag's head)."""
    none = {
        "source-ref": "s3://shots/in/e.jpg",
        "scene": [],
        "scene-metadata": {
            "class-map": {},
            "confidence-map": {},
            "type": "groundtruth/image-classification-multilabel",
            "job-name": "labeling-job/scene",
            "human-annotated": "yes",
        },
    }
    some = gt_single("s3://shots/in/f.jpg", "scene", 0, "beach")
    parsed = lf.parse_groundtruth(
        reader({"out.manifest": lines(none, some)}), ["out.manifest"], [], Columns()
    )
    assert [(r.ref, r.tags) for r in parsed.records] == [
        ("s3://shots/in/e.jpg", ()),
        ("s3://shots/in/f.jpg", ("beach",)),
    ]
    assert parsed.left_out == []
