"""The cloud labelling services' manifests: Amazon SageMaker Ground Truth (and Rekognition Custom Labels,
which reads the same lines) and Google Vertex AI's image classification import/export files.

- ``groundtruth``: JSON lines, each an image's ``source-ref`` (an s3:// URI) and, per labelling job, an
  attribute ``<job>`` with its ``<job>-metadata``: ``groundtruth/image-classification`` (a class index,
  its name in ``class-name``) or ``groundtruth/image-classification-multilabel`` (a list of indexes,
  named by ``class-map``). Every classification attribute's classes are the photo's tags (Rekognition
  writes one attribute per label); bounding boxes and masks label regions and are only counted.
- ``vertex``: JSON lines with ``imageGcsUri`` and ``classificationAnnotation`` (single label) or
  ``classificationAnnotations`` (multi-label), the split in ``dataItemResourceLabels``' ``ml_use``; or
  its CSV, ``[ML_USE,]GCS_FILE_PATH[,LABEL,...]`` without a header.

The photos are found by their bucket key (lightbox.label_formats.uris): the longest ending of the key
that names a file of the source (a bucket synced to a folder keeps the keys below its prefix); else an
s3:// URI is read from S3 itself, and a gs:// key is matched by name like any other file name.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from lightbox.label_formats.records import (
    SPLIT_ALIASES,
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    _no_separator,
    _only_columns,
    only_counted,
    parse_score_cell,
    split_of_path,
)
from lightbox.label_formats.uris import bucket_ref

_GT_SINGLE = "groundtruth/image-classification"
_GT_MULTI = "groundtruth/image-classification-multilabel"
_VERTEX_ML_USE = "aiplatform.googleapis.com/ml_use"
# Vertex AI writes training/validation/test/unassigned; AutoML Vision's legacy CSV and Google's Data
# Labeling export TRAIN/VALIDATION/TEST/UNASSIGNED.
_VERTEX_SPLITS = {
    "training": "train",
    "train": "train",
    "validation": "validation",
    "test": "test",
    "unassigned": None,
}

# A manifest's first line tells its service (sniffed by lightbox.label_formats.detection).
GROUNDTRUTH_LINE = re.compile(rb'\s*\{[^\n]*"source-ref"\s*:')
VERTEX_LINE = re.compile(rb'\s*\{[^\n]*"imageGcsUri"\s*:')
VERTEX_CSV_LINE = re.compile(rb"\s*(?:(?:training|train|validation|test|unassigned)\s*,\s*)?\"?gs://", re.I)


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _lines(data: bytes, name: str) -> list[tuple[int, str]]:
    text = _text(data, name)
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _json_lines(data: bytes, name: str, out: Parsed) -> Iterator[tuple[str, dict]]:
    """(origin, object) of each line that is a JSON object; the others are problems, in line order."""
    for i, line in _lines(data, name):
        origin = f"{name}:{i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            out.problems.append(Problem(origin, f"not a JSON line ({exc.msg})"))
            continue
        if not isinstance(row, dict):
            out.problems.append(Problem(origin, "not a JSON object"))
            continue
        yield origin, row


# --- SageMaker Ground Truth ------------------------------------------------------------------------------


def parse_groundtruth(
    read: Callable[[str], bytes], manifests: Sequence[str], files: Sequence[str], columns: Columns
) -> Parsed:
    """SageMaker Ground Truth output manifests (one per split, as Rekognition keeps train and test: the
    split is the one the manifest's name or folder says). ``--tags-column`` names the label attributes
    to read (default: every image classification attribute), ``--score-column`` a numeric attribute."""
    _only_columns(manifests[0], columns, ("tags", "score"), "a manifest's labels are its jobs' attributes")
    out = Parsed("groundtruth", [], has_tags=True, score_name=columns.score)
    present = frozenset(files)
    wanted = {t.strip() for t in columns.tags.split(",")} if columns.tags else None
    # Every label attribute seen, (name, type) -> whether it is read as classes, over every line.
    seen: dict[tuple[str, str], bool] = {}
    failed = scored = 0
    for name in manifests:
        base = posixpath.dirname(name)
        split = split_of_path(posixpath.splitext(name)[0])
        for origin, row in _json_lines(read(name), name, out):
            uri = row.get("source-ref")
            if not isinstance(uri, str):
                why = "labels text (source), not an image" if "source" in row else "no source-ref"
                out.problems.append(Problem(origin, why))
                continue
            attributes = _gt_attributes(row)
            for key, (kind, meta) in attributes.items():
                seen.setdefault((key, kind), _is_classification(kind, meta))
            try:
                ref = bucket_ref(uri, base, present)
                tags, n_failed, answered = _gt_tags(attributes, wanted)
                score = _gt_score(row, columns.score)
            except ValueError as exc:
                out.problems.append(Problem(uri, str(exc)))
                continue
            failed += n_failed
            scored += score is not None
            if not tags and score is None and not answered:
                out.left_out.append(ref)
                continue
            out.records.append(Record(ref=ref, origin=uri, score=score, tags=tags, split=split))
    _gt_refuse_or_note(seen, wanted, columns.score, out, manifests[0])
    if columns.score is not None and not scored:
        raise FormatError(f"{manifests[0]}: no line has a number in {columns.score!r} (--score-column)")
    if failed:
        out.notes.append(f"{failed} labels failed in Ground Truth (failure-reason), not read")
    if out.left_out:
        out.notes.append(f"{len(out.left_out)} images have no label read here, left out")
    return out


def _gt_attributes(row: Mapping[str, object]) -> dict[str, tuple[str, Mapping[str, object]]]:
    """A line's label attributes: each key with a ``<key>-metadata`` object, with its type."""
    found = {}
    for key, meta in row.items():
        if key.endswith("-metadata") and isinstance(meta, Mapping) and key[: -len("-metadata")] in row:
            found[key[: -len("-metadata")]] = (str(meta.get("type", "")), meta)
    return found


def _is_classification(kind: str, meta: Mapping[str, object]) -> bool:
    # A custom labelling workflow writes its own type; a class-name or class-map makes it classes.
    return kind in (_GT_SINGLE, _GT_MULTI) or (
        not kind.startswith("groundtruth/") and ("class-name" in meta or "class-map" in meta)
    )


def _gt_tags(
    attributes: Mapping[str, tuple[str, Mapping[str, object]]], wanted: set[str] | None
) -> tuple[tuple[str, ...], int, bool]:
    """The classes of a line's classification attributes (those ``wanted``), how many failed, and
    whether one was answered (a multi-label job's "None of the above" answers with no class)."""
    tags: set[str] = set()
    failed = 0
    answered = False
    for key, (kind, meta) in attributes.items():
        if (wanted is not None and key not in wanted) or not _is_classification(kind, meta):
            continue
        if "failure-reason" in meta:
            failed += 1
            continue
        answered = True
        tags.update(_gt_classes(key, meta))
    return tuple(_no_separator(sorted(tags))), failed, answered


def _gt_classes(key: str, meta: Mapping[str, object]) -> list[str]:
    class_map = meta.get("class-map")
    if isinstance(class_map, Mapping):
        return [str(v) for v in class_map.values() if str(v).strip()]
    name = meta.get("class-name")
    if isinstance(name, str) and name.strip():
        return [name]
    raise ValueError(f"{key}-metadata names no class (no class-name or class-map)")


def _gt_score(row: Mapping[str, object], attribute: str | None) -> float | None:
    if attribute is None:
        return None
    value = row.get(attribute)
    if isinstance(value, Mapping):  # a custom workflow's answer: {"rating": 4}
        numbers = [v for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        value = numbers[0] if len(numbers) == 1 else value
    return parse_score_cell(value)


def _gt_refuse_or_note(
    seen: Mapping[tuple[str, str], bool], wanted: set[str] | None, score: str | None, out: Parsed, name: str
) -> None:
    """No classification to read is refused, saying what the manifest holds; what is not read is said.
    ``seen``: every label attribute, (name, type) -> whether it is read as classes."""
    names = {key for key, _ in seen}
    if wanted is not None and wanted - names:
        raise FormatError(
            f"{name}: no label attribute {', '.join(sorted(wanted - names))} "
            f"(its attributes: {', '.join(sorted(names)) or 'none'})"
        )
    if not out.records and not out.left_out and not seen and not out.problems:
        raise FormatError(f"{name} holds no line with a source-ref: it is not a Ground Truth manifest")
    classification = [k for k, classes in seen.items() if classes]
    others = [k for k, classes in seen.items() if not classes and k[0] != score]
    if not out.records and others and not classification:
        raise FormatError(
            f"{name} holds no image classification label, only {_shown(others)}: boxes and masks label a "
            "region, not the photo; label the photos with an image classification job"
        )
    unused = [k for k in others if wanted is None or k[0] not in wanted]
    if unused:
        out.notes.append(f"label attributes not read (not image classification): {_shown(unused)}")
    read = [k for k in classification if wanted is None or k[0] in wanted]
    if len(read) > 1:
        out.notes.append(
            f"tags from {len(read)} label attributes, their classes together: {_shown(read)} "
            "(name some with --tags-column)"
        )


def _shown(attributes: Sequence[tuple[str, str]]) -> str:
    return ", ".join(sorted(f"{key} ({kind or 'no type'})" for key, kind in attributes))


# --- Vertex AI ----------------------------------------------------------------------------------------------


def parse_vertex(
    read: Callable[[str], bytes], files_in: Sequence[str], files: Sequence[str], columns: Columns
) -> Parsed:
    """Vertex AI image classification files (JSON lines or CSV, single or multi-label): the tags are
    the annotations' display names, the split the item's ``ml_use`` (``training``, ``validation``,
    ``test``; ``unassigned`` leaves it to lightbox)."""
    _only_columns(files_in[0], columns, (), "a Vertex AI file's labels are its annotations")
    out = Parsed("vertex", [], has_tags=True)
    present = frozenset(files)
    boxes = 0
    for name in files_in:
        data = read(name)
        base = posixpath.dirname(name)
        if name.lower().endswith(".csv"):
            _vertex_csv(data, name, base, present, out)
            continue
        for origin, row in _json_lines(data, name, out):
            uri = row.get("imageGcsUri")
            if not isinstance(uri, str):
                out.problems.append(Problem(origin, "no imageGcsUri"))
                continue
            boxes += len(row.get("boundingBoxAnnotations") or [])
            _vertex_item(out, uri, base, present, functools.partial(_vertex_row_labels, row))
    only_counted(out, files_in[0], boxes, "bounding boxes", "export an image classification dataset")
    if out.left_out:
        out.notes.append(f"{len(out.left_out)} images have no label (not labelled yet), left out")
    return out


def _vertex_tags(row: Mapping[str, object]) -> tuple[str, ...]:
    annotations = row.get("classificationAnnotations")
    if annotations is None:
        one = row.get("classificationAnnotation")
        annotations = [one] if one is not None else []
    if not isinstance(annotations, list) or not all(isinstance(a, Mapping) for a in annotations):
        raise ValueError("classificationAnnotation(s) is not an annotation object or a list of them")
    names = [a.get("displayName") for a in annotations]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("an annotation without a displayName")
    return tuple(sorted(set(_no_separator([str(n).strip() for n in names]))))


def _vertex_row_labels(row: Mapping[str, object]) -> tuple[tuple[str, ...], str | None]:
    resource = row.get("dataItemResourceLabels") or {}
    if not isinstance(resource, Mapping):
        raise ValueError("dataItemResourceLabels is not an object")
    return _vertex_tags(row), _vertex_split(resource.get(_VERTEX_ML_USE))


def _csv_labels(labels: list[str], split: str | None) -> tuple[tuple[str, ...], str | None]:
    return tuple(sorted(set(_no_separator(labels)))), split


def _vertex_split(ml_use: object) -> str | None:
    if ml_use is None:
        return None
    key = str(ml_use).strip().lower()
    if key in _VERTEX_SPLITS:
        return _VERTEX_SPLITS[key]
    if key in SPLIT_ALIASES:
        return SPLIT_ALIASES[key]
    raise ValueError(f"ml_use {str(ml_use)[:40]!r} is not training, validation, test or unassigned")


def _vertex_csv(data: bytes, name: str, base: str, present: frozenset[str], out: Parsed) -> None:
    """``[ML_USE,]GCS_FILE_PATH[,LABEL,...]`` rows, no header."""
    for i, cells in enumerate(csv.reader(io.StringIO(_text(data, name))), 1):
        if not any(c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells]
        origin = f"{name}:{i}"
        split = None
        if cells and cells[0].lower() in _VERTEX_SPLITS:
            split = _VERTEX_SPLITS[cells.pop(0).lower()]
        if not cells or not cells[0]:
            out.problems.append(Problem(origin, "no image path"))
            continue
        labels = [c for c in cells[1:] if c]
        _vertex_item(
            out,
            cells[0],
            base,
            present,
            functools.partial(_csv_labels, labels, split),
        )


def _vertex_item(
    out: Parsed,
    uri: str,
    base: str,
    present: frozenset[str],
    labels: Callable[[], tuple[tuple[str, ...], str | None]],
) -> None:
    """One image of a Vertex AI file: a record, left out when it has no label, or a problem."""
    try:
        ref = bucket_ref(uri, base, present)
        tags, split = labels()
    except (ValueError, AttributeError) as exc:
        out.problems.append(Problem(uri, str(exc)))
        return
    if tags:
        out.records.append(Record(ref=ref, origin=uri, tags=tags, split=split))
    else:
        out.left_out.append(ref)
