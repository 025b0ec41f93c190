"""Parsing Labelbox exports (export v2 NDJSON, the SDK's JSON list of the same rows, and the older
export v1 JSON) and Azure Machine Learning data labeling exports (JSON lines): no image is read. The
lines are built as the tools write them, with the fields a real export carries beside the labels."""

from __future__ import annotations

import itertools
import json

import pytest

from lightbox import label_formats as lf
from lightbox.label_formats import Columns, FormatError

pytestmark = pytest.mark.unit

_ids = itertools.count(1)


def cuid() -> str:
    """An id shaped as Labelbox writes them (25 characters, starting with c)."""
    return f"clu{next(_ids):07d}x0c4o07yb6t2h"


def reader(files: dict[str, str]):  # noqa: ANN201 - the read callable the parsers take
    return lambda name: files[name].encode()


def ndjson(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# --- Labelbox export v2, as project.export() and the app's "Export data" write each data row ---------

PROJECT = "cltd3vkju021907u63w2odj69"


def option(name: str, *nested: dict) -> dict:
    return {
        "feature_id": cuid(),
        "feature_schema_id": cuid(),
        "name": name,
        "value": name.lower().replace(" ", "_"),
        "classifications": list(nested),
    }


def radio(question: str, answer: str, *nested: dict) -> dict:
    return {
        "feature_id": cuid(),
        "feature_schema_id": cuid(),
        "name": question,
        "value": question.lower().replace(" ", "_"),
        "radio_answer": option(answer, *nested),
    }


def checklist(question: str, *answers: str) -> dict:
    return {
        "feature_id": cuid(),
        "feature_schema_id": cuid(),
        "name": question,
        "value": question.lower().replace(" ", "_"),
        "checklist_answers": [option(a) for a in answers],
    }


def text(question: str, content: str) -> dict:
    return {
        "feature_id": cuid(),
        "feature_schema_id": cuid(),
        "name": question,
        "value": question.lower().replace(" ", "_"),
        "text_answer": {"content": content},
    }


def box(name: str = "bird", *nested: dict) -> dict:
    return {
        "feature_id": cuid(),
        "feature_schema_id": cuid(),
        "name": name,
        "value": name,
        "annotation_kind": "ImageBoundingBox",
        "classifications": list(nested),
        "bounding_box": {"top": 977.0, "left": 1690.0, "height": 330.0, "width": 225.0},
    }


def label(
    *classifications: dict,
    objects: tuple[dict, ...] = (),
    by: str = "ana@acme.example",
    at: str = "2024-04-08T16:21:26.000+00:00",
    skipped: bool = False,
) -> dict:
    return {
        "label_kind": "Default",
        "version": "1.0.0",
        "id": cuid(),
        "label_details": {
            "created_at": at,
            "updated_at": at,
            "created_by": by,
            "content_last_updated_at": at,
            "reviews": [],
        },
        "performance_details": {"seconds_to_create": 14.2, "seconds_to_review": 0, "skipped": skipped},
        "annotations": {
            "objects": list(objects),
            "classifications": list(classifications),
            "relationships": [],
        },
    }


def project(*labels: dict, name: str = "Shoot scenes", consensus: int = 1) -> dict:
    return {
        "name": name,
        "labels": list(labels),
        "project_details": {
            "ontology_id": cuid(),
            "task_id": cuid(),
            "task_name": "Done",
            "batch_id": cuid(),
            "batch_name": "spring-batch",
            "workflow_status": "DONE",
            "priority": 5,
            "consensus_expected_label_count": consensus,
            "workflow_history": [],
        },
    }


def row(
    row_data: str,
    *labels: dict,
    global_key: str | None = None,
    external_id: str | None = None,
    projects: dict | None = None,
) -> dict:
    data_row: dict = {"id": cuid()}
    if global_key is not None:  # "If utilized": absent otherwise
        data_row["global_key"] = global_key
    if external_id is not None:
        data_row["external_id"] = external_id
    data_row["row_data"] = row_data
    data_row["details"] = {
        "dataset_id": cuid(),
        "dataset_name": "spring shoot",
        "created_at": "2024-03-15T14:46:58.000+00:00",
        "updated_at": "2024-03-15T14:46:58.000+00:00",
        "last_activity_at": "2024-04-08T16:34:01.000+00:00",
        "created_by": "owner@acme.example",
    }
    return {
        "data_row": data_row,
        "media_attributes": {"height": 1707, "width": 2560, "mime_type": "image/jpeg", "exif_rotation": "1"},
        "attachments": [],
        "metadata_fields": [],
        "projects": projects if projects is not None else {PROJECT: project(*labels)},
    }


def url(name: str) -> str:
    return f"https://storage.googleapis.com/acme-shoots/2024/spring/{name}"


def test_labelbox_radio_checklist_and_nested_answers_are_tags_objects_and_text_only_counted() -> None:
    scene = radio("Scene", "Sunset", checklist("Sky", "Clouds", "Sun visible"))
    first = label(
        scene,
        checklist("Subjects", "Heron", "Reeds"),
        text("Caption", "a heron at dusk"),
        objects=(box("bird", radio("Pose", "perched")), box("bird")),
    )
    lines = ndjson(
        row(url("a.jpg"), first, global_key="spring/a.jpg", external_id="a.jpg"),
        row(url("b.jpg"), label(radio("Scene", "Overcast")), external_id="b.jpg"),
    )
    parsed = lf.parse_labelbox(
        reader({"export.ndjson": lines}), ["export.ndjson"], ["a.jpg", "b.jpg"], Columns()
    )
    assert parsed.format == "labelbox" and parsed.has_tags and parsed.score_name is None
    assert [(r.ref, r.tags) for r in parsed.records] == [
        ("a.jpg", ("Clouds", "Heron", "Reeds", "Sun visible", "Sunset")),  # the box's "perched" is no tag
        ("b.jpg", ("Overcast",)),
    ]
    assert [r.origin for r in parsed.records] == ["a.jpg", "b.jpg"]  # the name the user gave the photo
    notes = " ".join(parsed.notes)
    assert "2 objects" in notes and "region" in notes
    assert "free-text questions not read: Caption" in notes
    assert "tags from 3 questions together: Scene, Sky, Subjects" in notes


def test_labelbox_tags_column_picks_questions_and_a_number_answer_is_the_score() -> None:
    rows = [
        row(url("1.jpg"), label(radio("Scene", "Beach"), checklist("Mood", "Calm"), radio("Stars", "4"))),
        row(url("2.jpg"), label(radio("Scene", "Forest"), checklist("Mood", "Dark"), text("Stars", "3.5"))),
        row(url("3.jpg"), label(radio("Scene", "Forest"), radio("Stars", "5 stars"))),
    ]
    files = {"e.ndjson": ndjson(*rows)}
    parsed = lf.parse_labelbox(
        reader(files), ["e.ndjson"], ["1.jpg", "2.jpg", "3.jpg"], Columns(score="Stars", tags="Scene")
    )
    assert [(r.ref, r.tags, r.score) for r in parsed.records] == [
        ("1.jpg", ("Beach",), 4.0),
        ("2.jpg", ("Forest",), 3.5),
    ]
    assert parsed.score_name == "Stars"
    assert [p.reason for p in parsed.problems] == ["Stars: score '5 stars' is not a number"]
    # Several questions by name; one that is not in the export is refused, listing the questions.
    both = lf.parse_labelbox(reader(files), ["e.ndjson"], [], Columns(score="Stars", tags="Scene, Mood"))
    assert [r.tags for r in both.records] == [("Beach", "Calm"), ("Dark", "Forest")]
    with pytest.raises(FormatError, match="no question 'Weather' .*questions: Mood, Scene, Stars"):
        lf.parse_labelbox(reader(files), ["e.ndjson"], [], Columns(tags="Weather"))
    with pytest.raises(FormatError, match="no data row has a number for 'Scene'"):
        lf.parse_labelbox(reader(files), ["e.ndjson"], [], Columns(score="Scene"))
    with pytest.raises(FormatError, match="does not apply here"):
        lf.parse_labelbox(reader(files), ["e.ndjson"], [], Columns(split="split"))


def test_labelbox_labelers_vote_and_the_latest_project_answers_a_question() -> None:
    # Consensus: three labelers of one project; a tag counts when most chose it, the score is their mean.
    votes = row(
        url("c.jpg"),
        label(checklist("Subjects", "Heron", "Reeds"), radio("Stars", "4"), by="ana@acme.example"),
        label(checklist("Subjects", "Heron"), radio("Stars", "5"), by="bo@acme.example"),
        label(checklist("Subjects", "Wren", "Reeds"), radio("Stars", "3"), by="cy@acme.example"),
    )
    # A data row labelled in two projects (a Catalog export): the later project's answer to the Scene
    # question replaces the earlier's; the questions only one project asked are kept.
    early = project(
        label(radio("Scene", "Dawn"), checklist("Subjects", "Heron"), at="2024-03-01T09:00:00.000+00:00")
    )
    late = project(label(radio("Scene", "Dusk"), at="2024-05-02T10:00:00.000+00:00"), name="Scene review")
    relabelled = row(url("d.jpg"), projects={"clproj000000000000000late": late, PROJECT: early})
    files = {"e.ndjson": ndjson(votes, relabelled)}
    parsed = lf.parse_labelbox(reader(files), ["e.ndjson"], ["c.jpg", "d.jpg"], Columns(score="Stars"))
    assert [(r.tags, r.score) for r in parsed.records] == [
        (("Heron", "Reeds"), 4.0),
        (("Dusk", "Heron"), None),
    ]
    notes = " ".join(parsed.notes)
    assert "1 data rows have several labels in a project" in notes and "most of its labelers" in notes
    assert "1 data rows are labelled in several projects" in notes and "latest" in notes


def test_labelbox_skipped_and_unlabelled_rows_are_left_out_and_counted() -> None:
    rows = [
        row(url("1.jpg"), label(radio("Scene", "Beach"))),
        row(url("2.jpg"), label(skipped=True)),  # skipped: no annotations
        row(url("3.jpg"), label(radio("Scene", "Forest"), skipped=True), label(radio("Scene", "Beach"))),
        row(url("4.jpg"), projects={}),  # in the dataset, not labelled in any project yet
        row(url("5.jpg"), projects={PROJECT: project()}),  # queued in the project, no label yet
    ]
    files = {"e.ndjson": ndjson(*rows)}
    present = [f"{i}.jpg" for i in range(1, 6)]
    parsed = lf.parse_labelbox(reader(files), ["e.ndjson"], present, Columns())
    assert [(r.ref, r.tags) for r in parsed.records] == [("1.jpg", ("Beach",)), ("3.jpg", ("Beach",))]
    assert parsed.left_out == ["2.jpg", "4.jpg", "5.jpg"]
    notes = " ".join(parsed.notes)
    assert "1 data rows skipped by their labelers" in notes and "2 data rows not labelled yet" in notes
    everything_skipped = {"s.ndjson": ndjson(row(url("2.jpg"), label(skipped=True)))}
    with pytest.raises(FormatError, match="none of its 1 data rows has a label that was not skipped"):
        lf.parse_labelbox(reader(everything_skipped), ["s.ndjson"], present, Columns())


def test_labelbox_boxes_without_a_classification_are_refused_saying_why() -> None:
    files = {"e.ndjson": ndjson(row(url("1.jpg"), label(objects=(box(), box("reed")))))}
    with pytest.raises(FormatError, match="2 objects and no classification.*region, not the photo"):
        lf.parse_labelbox(reader(files), ["e.ndjson"], [], Columns())
    bad = {
        "e.ndjson": '{"data_row": {"id": "x"}}\nnot json\n'
        + ndjson(row(url("1.jpg"), label(radio("S", "a"))))
    }
    parsed = lf.parse_labelbox(reader(bad), ["e.ndjson"], [], Columns())
    assert [(p.origin, p.reason) for p in parsed.problems] == [
        ("e.ndjson:1", "no row_data in data_row"),
        ("e.ndjson:2", "not a JSON line (Expecting value)"),
    ]
    with pytest.raises(FormatError, match="not a Labelbox export"):
        lf.parse_labelbox(reader({"x.json": '[{"data": {"image": "a.jpg"}}]'}), ["x.json"], [], Columns())


def test_the_sdks_json_list_of_export_rows_reads_as_its_ndjson() -> None:
    # json.dump(export_task.result, f, indent=2), as many scripts keep an export.
    rows = [
        row(url("a.jpg"), label(radio("Scene", "Beach"))),
        row(url("b.jpg"), label(radio("Scene", "Dunes"))),
    ]
    files = {"labels.json": json.dumps(rows, indent=2)}
    parsed = lf.parse_labelbox(reader(files), ["labels.json"], ["a.jpg", "b.jpg"], Columns())
    assert [r.tags for r in parsed.records] == [("Beach",), ("Dunes",)]


def test_labelbox_export_v1_json() -> None:
    """The older export (project.export_labels()): one object per label, the answers under "answer"
    (a radio's option, a dropdown's list, a text's string) or "answers" (a checklist)."""

    def v1(data_row: str, labeled: str, lab: object, external: str | None, **more: object) -> dict:
        return {
            "ID": cuid(),
            "DataRow ID": data_row,
            "DataRow Metadata": [],
            "Media Attributes": {"width": 2560, "height": 1707, "mimeType": "image/jpeg"},
            "Labeled Data": labeled,
            "Label": lab,
            "Created By": "ana@acme.example",
            "Project Name": "Shoot scenes",
            "Created At": "2021-09-02T22:23:24.000Z",
            "Updated At": "2021-09-02T23:31:27.707Z",
            "Seconds to Label": 220.9,
            "External ID": external,
            "Global Key": None,
            "Agreement": -1,
            "Benchmark Agreement": -1,
            "Benchmark ID": None,
            "Dataset Name": "spring shoot",
            "Reviews": [],
            "View Label": "https://editor.labelbox.com?project=ckt3h8d9z51l10y7uavvf5zcn&label=x",
            "Has Open Issues": 0,
            "Skipped": False,
            "Data Split": None,
            **more,
        }

    def answer(title: str, **more: object) -> dict:
        return {"featureId": cuid(), "schemaId": cuid(), "title": title, "value": title.lower(), **more}

    hosted = "https://storage.labelbox.com/ckk4q1vgapsau07324awnsjq2%2Fa8c0d364-b10f-5b49-09a3-151264999cfb-1?Expires=1630706709794&KeyName=labelbox-assets-key-3&Signature=W8RPYzKo"
    scene = answer(
        "Scene", answer=answer("Sunset", classifications=[answer("Sky", answers=[answer("Clouds")])])
    )
    first = {
        "objects": [
            {
                "featureId": cuid(),
                "schemaId": cuid(),
                "title": "bird",
                "value": "bird",
                "bbox": {"top": 1, "left": 2, "height": 3, "width": 4},
            }
        ],
        "classifications": [
            scene,
            answer("Subjects", answers=[answer("Heron"), answer("Reeds")]),
            answer("Lens", answer=[answer("Tele")]),  # a dropdown
            answer("Caption", answer="a heron at dusk"),
        ],
        "relationships": [],
    }
    records = [
        v1("ckr083n0e196n0ydk4uyzapvn", hosted, first, "IMG_0001.jpg"),
        v1("ckr083n0e196n0ydk4uyzapvo", url("IMG_0002.jpg"), {}, None, Skipped=True),
        v1("ckr083n0e196n0ydk4uyzapvp", url("IMG_0003.jpg"), "Skip", None),  # the oldest exports' skip
    ]
    files = {"export.json": json.dumps(records)}
    present = ["photos/IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg"]
    parsed = lf.parse_labelbox(reader(files), ["export.json"], present, Columns())
    # Named by its external id alone: found in photos/ by the importer's name matching, after parsing.
    assert [(r.ref, r.tags) for r in parsed.records] == [
        ("IMG_0001.jpg", ("Clouds", "Heron", "Reeds", "Sunset", "Tele"))
    ]
    assert parsed.left_out == ["IMG_0002.jpg", "IMG_0003.jpg"]
    assert "2 data rows skipped" in " ".join(parsed.notes) and "1 objects" in " ".join(parsed.notes)


def test_a_labelbox_photo_is_found_by_its_url_its_global_key_or_its_external_id() -> None:
    hosted = "https://storage.labelbox.com/ckk4q1vgapsau07324awnsjq2%2Fa8c0d364-b10f-1?Expires=1630706709794&Signature=W8RP"
    rows = [
        row(url("day1/IMG_0001.jpg"), label(radio("S", "a"))),  # the bucket synced below day1/
        row(hosted, label(radio("S", "b")), global_key="shoot/day2/IMG_0001.jpg"),
        row(hosted, label(radio("S", "c")), external_id="IMG_0009.jpg"),  # uploaded from a folder
        row(url("day3/IMG_0042.jpg"), label(radio("S", "d"))),  # never downloaded
        row(hosted, label(radio("S", "e"))),
        row("s3://acme-raw/shoot/day4/x.jpg", label(radio("S", "f"))),  # IAM-delegated S3: read from S3
    ]
    files = {"labels/export.ndjson": ndjson(*rows)}
    present = ["day1/IMG_0001.jpg", "day2/IMG_0001.jpg", "labels/IMG_0009.jpg"]
    parsed = lf.parse_labelbox(reader(files), ["labels/export.ndjson"], present, Columns())
    assert [r.ref for r in parsed.records] == [
        "day1/IMG_0001.jpg",
        "day2/IMG_0001.jpg",
        "labels/IMG_0009.jpg",
        "acme-shoots/2024/spring/day3/IMG_0042.jpg",  # missing: reported by the importer
        "ckk4q1vgapsau07324awnsjq2/a8c0d364-b10f-1",
        "s3://acme-raw/shoot/day4/x.jpg",
    ]
    assert parsed.records[4].origin == hosted.split("?")[0]  # a signed URL's signature is no name


# --- Azure Machine Learning data labeling: exported as an Azure ML dataset (MLTable JSON lines) ---------

AML = "azureml://subscriptions/5f08d643-1910-4a38-a7c7-84a39d4f42e0/resourcegroups/vision-rg/workspaces/vision-ws/datastores/workspaceblobstore/paths"


def aml(path: str, label: object, confidence: object = 1.0, **more: object) -> dict:
    return {
        "image_url": f"{AML}/{path}",
        "image_details": {"format": "jpg", "width": "400px", "height": "258px"},
        "label": label,
        "label_confidence": confidence,
        **more,
    }


def test_azureml_multi_class_multi_label_and_boxes_counted() -> None:
    lines = ndjson(
        aml("UI/2024-04-08_162126_UTC/birds/a.jpg", "heron"),
        aml("UI/2024-04-08_162126_UTC/birds/b.jpg", ["wren", "reeds"], [1.0, 0.93]),
        {
            "image_url": "AmlDatastore://workspaceblobstore/UI/2024-04-08_162126_UTC/birds/c.jpg",
            "label": "kestrel",
            "label_confidence": [1.0],
        },
        aml("UI/2024-04-08_162126_UTC/birds/d.jpg", []),  # not labelled yet
        aml(
            "UI/2024-04-08_162126_UTC/birds/e.jpg",
            [{"label": "heron", "topX": 0.26, "topY": 0.4, "bottomX": 0.73, "bottomY": 0.7, "isCrowd": 0}],
        ),
        aml("UI/2024-04-08_162126_UTC/birds/f.jpg", "a|b"),
    )
    files = {"export/labels.jsonl": lines}
    present = ["export/birds/a.jpg", "birds/b.jpg", "workspaceblobstore/UI/2024-04-08_162126_UTC/birds/c.jpg"]
    parsed = lf.parse_azureml(reader(files), ["export/labels.jsonl"], present, Columns())
    assert parsed.format == "azureml" and parsed.has_tags
    assert [(r.ref, r.tags) for r in parsed.records] == [
        ("export/birds/a.jpg", ("heron",)),
        ("birds/b.jpg", ("reeds", "wren")),
        ("workspaceblobstore/UI/2024-04-08_162126_UTC/birds/c.jpg", ("kestrel",)),
    ]
    assert parsed.records[0].origin == f"{AML}/UI/2024-04-08_162126_UTC/birds/a.jpg"
    assert parsed.left_out == [
        "workspaceblobstore/UI/2024-04-08_162126_UTC/birds/d.jpg",
        "workspaceblobstore/UI/2024-04-08_162126_UTC/birds/e.jpg",
    ]
    assert [p.reason for p in parsed.problems] == [
        "tag 'a|b' contains '|', which lightbox reserves as its separator"
    ]
    assert "1 boxes or polygons not read" in " ".join(parsed.notes)
    with pytest.raises(FormatError, match="does not apply here"):
        lf.parse_azureml(reader(files), ["export/labels.jsonl"], present, Columns(score="label_confidence"))


def test_azureml_refusals_say_what_the_file_holds() -> None:
    boxes = {
        "o.jsonl": ndjson(
            aml("x/1.jpg", [{"label": "car", "topX": 0.1, "topY": 0.1, "bottomX": 0.2, "bottomY": 0.2}])
        )
    }
    with pytest.raises(FormatError, match="1 boxes or polygons and no image classification label"):
        lf.parse_azureml(reader(boxes), ["o.jsonl"], [], Columns())
    with pytest.raises(FormatError, match="no line with an image_url"):
        lf.parse_azureml(reader({"o.jsonl": '{"file_name": "a.jpg"}\n'}), ["o.jsonl"], [], Columns())


# --- detection ------------------------------------------------------------------------------------------


def test_labelbox_and_azureml_exports_are_told_by_their_first_line() -> None:
    v2 = ndjson(row(url("a.jpg"), label(radio("S", "a")))).encode()
    listed = json.dumps([row(url("a.jpg"), label(radio("S", "a")))], indent=2).encode()
    v1 = json.dumps([{"ID": "c1", "DataRow ID": "c2", "Labeled Data": url("a.jpg"), "Label": {}}]).encode()
    azure = ndjson(aml("x/a.jpg", "heron")).encode()
    datastore = b'{"image_url": "AmlDatastore://workspaceblobstore/x/a.jpg", "label": ["heron"]}\n'
    assert lf.sniff("Export v2 project - Shoot - 4_8_2024.ndjson", v2) == "labelbox"
    assert lf.sniff("export.json", listed) == "labelbox"
    assert lf.sniff("export-2021-09-02.json", v1) == "labelbox"
    assert lf.sniff("labeledDatasets.jsonl", azure) == "azureml"
    assert lf.sniff("labels.json", datastore) == "azureml"
    # A Label Studio export and an imagefolder table are neither.
    assert lf.sniff("project-1.json", b'[{"id": 1, "data": {"image": "a.jpg"}, "annotations": []}]') is None
    assert lf.sniff("metadata.jsonl", b'{"file_name": "a.jpg", "label": "heron"}\n') is None
    assert lf.detect(["export.ndjson"], source_is_file=True, head=lambda f: v2) == "labelbox"
    assert lf.detect(["export.json", "photos/a.jpg"], head=lambda f: listed) == "labelbox"
    assert lf.detect(["labels.jsonl", "birds/a.jpg"], head=lambda f: azure) == "azureml"
    assert {"labelbox", "azureml"} <= set(lf.FORMATS)
    with pytest.raises(FormatError, match="a Labelbox export .*an Azure Machine Learning"):
        lf.detect(["export.ndjson"], source_is_file=True, head=lambda f: b"{}\n")


def test_a_labelbox_photo_uploaded_from_a_laptop_is_matched_by_its_external_id_not_its_storage_name() -> None:
    """Labelbox stores an upload as <org>/<uuid>-<file name>: that mangled name is no name of the user's
    copy, so the photo is matched later by the name it was uploaded under (found in any folder)."""
    hosted = (
        "https://storage.labelbox.com/ckk4q1vgapsau07324awnsjq2%2F26403a22-eb0a-1e2b-4f6f-b2ef29a0b0c2-"
        "IMG_0007.jpg?Expires=1630706709794&KeyName=labelbox-assets-key-3&Signature=W8RP"
    )
    files = {"export.ndjson": ndjson(row(hosted, label(radio("S", "a")), external_id="IMG_0007.jpg"))}
    parsed = lf.parse_labelbox(reader(files), ["export.ndjson"], ["photos/IMG_0007.jpg"], Columns())
    assert [r.ref for r in parsed.records] == ["IMG_0007.jpg"]
