"""FiftyOne's FiftyOneImageClassificationDataset (``labels.json``) and FiftyOneDataset (``samples.json``)."""

from __future__ import annotations

import json
import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence

from lightbox.imaging import is_image_name
from lightbox.label_formats.records import (
    _WINDOWS_PATH,
    SCORE_COLUMNS,
    SPLIT_ALIASES,
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    _no_separator,
    _only_columns,
    _text,
    parse_score_cell,
    parse_split,
    ref_of,
    split_of_path,
)
from lightbox.label_formats.tables import _first_named

# A FiftyOneDataset sample's own keys: never a label field.
_FO_SAMPLE_KEYS = frozenset(
    {"_id", "id", "filepath", "tags", "metadata", "_media_type", "_rand", "_dataset_id", "created_at"}
    | {"last_modified_at", "frames", "_frames"}
)
_FO_TAG_KINDS = frozenset({"Classification", "Classifications"})


def parse_fiftyone(
    read: Callable[[str], bytes], labels_files: Sequence[str], files: Sequence[str], columns: Columns
) -> Parsed:
    """FiftyOne's exports: ``FiftyOneImageClassificationDataset`` (``labels.json``: ``{"classes": [...]
    or null, "labels": {"<name>": <class index, label, list of them, or null>}}``, photos in ``data/``
    beside it, one such folder per split) and ``FiftyOneDataset`` (``samples.json``: each sample's
    ``filepath``, its label fields and its sample tags, of which train/validation/test are its split).
    A null label is an unlabelled photo: left out and counted. ``files``: the source's files, to find
    ``data/<name>`` whatever its extension."""
    out = Parsed("fiftyone", [])
    for name in labels_files:
        try:
            doc = json.loads(read(name).decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{name} is not a JSON file: {exc}") from None
        if isinstance(doc, dict) and isinstance(doc.get("labels"), dict):
            _only_columns(name, columns, (), "a FiftyOneImageClassificationDataset holds one label per photo")
            _fo_classification(doc.get("classes"), doc["labels"], name, files, out)
        elif isinstance(doc, dict) and isinstance(doc.get("samples"), list):
            _fo_samples(doc["samples"], name, columns, out)
        elif isinstance(doc, dict) and str(doc.get("type", "")).startswith("eta.core.datasets."):
            raise FormatError(
                f"{name} is a FiftyOneImageLabelsDataset, which lightbox does not read: export the "
                "dataset as FiftyOneImageClassificationDataset or FiftyOneDataset"
            )
        else:
            raise FormatError(
                f'{name} is not a FiftyOne export: expected {{"classes", "labels"}} '
                '(FiftyOneImageClassificationDataset) or {"samples"} (FiftyOneDataset)'
            )
    if out.left_out:
        out.notes.append(f"{len(out.left_out)} photos have no label (null: not labelled yet), left out")
    return out


def _fo_classification(
    classes: object, labels: Mapping[str, object], name: str, files: Sequence[str], out: Parsed
) -> None:
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise FormatError(f'{name}: "classes" is neither a list of class names nor null')
    base = posixpath.dirname(name)
    data = posixpath.join(base, "data")
    by_stem = {posixpath.splitext(f)[0]: f for f in files if f.startswith(data + "/") and is_image_name(f)}
    split = split_of_path(base)
    confident = 0
    for key, target in labels.items():
        path = posixpath.normpath(posixpath.join(data, str(key)))
        ref = by_stem.get(path, path)  # FiftyOne names a photo without its extension
        if target is None:
            out.left_out.append(ref)
            continue
        confident += sum(1 for t in (target if isinstance(target, list) else [target]) if _fo_confident(t))
        try:
            out.records.append(Record(ref=ref, origin=ref, tags=_fo_targets(target, classes), split=split))
        except ValueError as exc:
            out.problems.append(Problem(ref, str(exc), ref))
    out.has_tags = True
    if confident:
        out.notes.append(
            f"{name}: {confident} labels carry a confidence (a model's predictions?): taken as labels"
        )


def _fo_confident(target: object) -> bool:
    return isinstance(target, Mapping) and target.get("confidence") is not None


def _fo_targets(target: object, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The tags of one photo's target: a class index, a label, ``{"label": ...}``, or a list of them."""
    tags = []
    for item in target if isinstance(target, list) else [target]:
        label = item.get("label") if isinstance(item, Mapping) else item
        if isinstance(label, int) and not isinstance(label, bool):
            if classes is None or not 0 <= label < len(classes):
                raise ValueError(f"class index {label} is not one of the {len(classes or [])} classes")
            label = classes[label]
        if not isinstance(label, str):
            raise ValueError(f"label {str(label)[:40]!r} is neither a class index nor a class name")
        tags.append(label.strip())
    return tuple(sorted(set(_no_separator([t for t in tags if t]))))


def _fo_kind(value: object) -> str | None:
    """What a FiftyOneDataset sample field holds: a label's ``_cls`` (Classification, Regression,
    Detections, ...), ``number``, or None (text, lists, nothing)."""
    if isinstance(value, Mapping):
        return str(value.get("_cls")) if value.get("_cls") else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return None


def _fo_fields(
    name: str, samples: Sequence[object], columns: Columns
) -> tuple[str | None, str | None, list[str]]:
    """(tags field, score field, notes): the named ones, else ``ground_truth`` or the only
    Classification(s) field for the tags, and the only Regression field (or a number field under a
    score's usual name) for the score."""
    kinds: dict[str, set[str]] = defaultdict(set)
    for sample in samples:
        if isinstance(sample, Mapping):
            for key, value in sample.items():
                kind = _fo_kind(value)
                if kind is not None and key not in _FO_SAMPLE_KEYS:
                    kinds[key].add(kind)
    listed = ", ".join(f"{k} ({'/'.join(sorted(v))})" for k, v in kinds.items()) or "none"
    label_fields = [k for k, v in kinds.items() if v & _FO_TAG_KINDS]
    scores = [k for k, v in kinds.items() if v <= {"Regression", "number"}]
    for given, allowed, what in ((columns.tags, label_fields, "tags"), (columns.score, scores, "score")):
        if given is not None and given not in allowed:
            raise FormatError(f"{name}: no {what} field {given!r} (label and number fields: {listed})")
    tags = columns.tags
    if tags is None and len(label_fields) > 1:
        if "ground_truth" not in label_fields:
            raise FormatError(
                f"{name}: several classification fields ({', '.join(label_fields)}): "
                "pick one with --tags-column"
            )
        tags = "ground_truth"
    elif tags is None and label_fields:
        tags = label_fields[0]
    regressions = [k for k in scores if "Regression" in kinds[k]]
    score = columns.score or (
        regressions[0] if len(regressions) == 1 else _first_named(scores, SCORE_COLUMNS)
    )
    notes = []
    unused = [k for k in kinds if k not in (tags, score)]
    regions = [
        k for k in unused if kinds[k] & {"Detections", "Detection", "Polylines", "Keypoints", "Segmentation"}
    ]
    if regions:
        notes.append(
            f"{name}: object annotation fields not read (each labels a region, not the photo): "
            + ", ".join(regions)
        )
    others = [k for k in unused if k not in regions]
    if others:
        notes.append(
            f"{name}: fields not used: {', '.join(others)} (name others with --tags-column or --score-column)"
        )
    return tags, score, notes


def _fo_samples(samples: list, name: str, columns: Columns, out: Parsed) -> None:
    tags_field, score_field, notes = _fo_fields(name, samples, columns)
    if tags_field is None and score_field is None:
        raise FormatError(
            f"{name}: no Classification, Classifications or Regression field to label the photos with: "
            "name one with --tags-column or --score-column"
        )
    out.notes += notes
    out.has_tags = out.has_tags or tags_field is not None
    out.score_name = out.score_name or score_field
    base = posixpath.dirname(name)
    sample_tags: Counter[str] = Counter()
    for i, sample in enumerate(samples):
        origin = f"{name} sample {i}"
        if not isinstance(sample, Mapping) or not isinstance(sample.get("filepath"), str):
            out.problems.append(Problem(origin, "not a sample with a filepath"))
            continue
        ref = ref_of(base, sample["filepath"])
        label, number = sample.get(tags_field or ""), sample.get(score_field or "")
        if label is None and number is None:
            out.left_out.append(ref)
            continue
        found = [t for t in sample.get("tags") or [] if isinstance(t, str)]
        sample_tags.update(t for t in found if t.lower() not in SPLIT_ALIASES)
        try:
            if _WINDOWS_PATH.match(sample["filepath"]):
                raise ValueError("a Windows path: export the dataset with its media (export_media=True)")
            out.records.append(
                Record(
                    ref=ref,
                    origin=ref,
                    score=_fo_score(number),
                    tags=_fo_label_tags(label),
                    split=parse_split(sample.get(columns.split)) if columns.split else _fo_split(found),
                    group=_text(sample.get(columns.group)) if columns.group else None,
                )
            )
        except ValueError as exc:
            out.problems.append(Problem(ref, str(exc), ref))
    if sample_tags:
        shown = ", ".join(f"{t} ({n})" for t, n in sample_tags.most_common(5))
        out.notes.append(f"{name}: sample tags are not labels, not read: {shown}")


def _fo_label_tags(label: object) -> tuple[str, ...]:
    if label is None:
        return ()
    if not isinstance(label, Mapping):
        raise ValueError(f"label {str(label)[:40]!r} is not a FiftyOne label")
    items = label.get("classifications") if label.get("_cls") == "Classifications" else [label]
    return _fo_targets([i for i in items or [] if isinstance(i, Mapping)], None)


def _fo_score(value: object) -> float | None:
    if isinstance(value, Mapping):  # a Regression label
        value = value.get("value")
    return parse_score_cell(value)


def _fo_split(sample_tags: Sequence[str]) -> str | None:
    """The split a sample's tags name (FiftyOne's zoo datasets tag each sample train, validation or test)."""
    splits = {SPLIT_ALIASES[t.lower()] for t in sample_tags if t.lower() in SPLIT_ALIASES}
    if len(splits) > 1:
        raise ValueError(f"sample tags name several splits ({', '.join(sorted(splits))})")
    return next(iter(splits), None)
