"""COCO files whose annotations label the whole photo: image classification as Azure Machine Learning
data labeling exports it ("Export to COCO": ``images`` with ``file_name`` and the datastore's
``coco_url``, one annotation per class with no box, several for a multi-label project), and as other
tools write classification in COCO's layout (one file per split folder, Roboflow's
``train/_annotations.coco.json``).

An annotation without a box or a polygon is a class of its photo, a tag; one with a box or a polygon
labels a region and is only counted (a detection dataset is refused, saying so). A photo with no class is
left out and counted. ``--tags-column A,B`` keeps some classes. Photos are found by ``file_name``
(relative to the file's folder, or its longest ending in the source), else by ``coco_url``'s datastore
path; the split from the file's folder or name (``valid/``, ``instances_train.json``).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence

from lightbox.label_formats.records import (
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    _no_separator,
    _only_columns,
    named_in,
    only_counted,
    split_of_path,
)
from lightbox.label_formats.uris import locate

# A COCO file's first bytes (sniffed by lightbox.label_formats.detection): an object with an images list.
COCO_HEAD = re.compile(rb'\s*\{.*?"images"\s*:\s*\[', re.S)
_SPLIT_WORD = re.compile(r"[^A-Za-z]+")


def parse_coco(
    read: Callable[[str], bytes], names: Sequence[str], files: Collection[str], columns: Columns
) -> Parsed:
    _only_columns(names[0], columns, ("tags",), "a COCO file's labels are its categories")
    keep = named_in(columns.tags)
    out = Parsed("coco", [], has_tags=True)
    present = frozenset(files)
    regions = 0
    for name in names:
        coco = _load(read(name), name)
        categories = {c.get("id"): str(c.get("name", "")).strip() for c in _objects(coco, "categories")}
        classes: defaultdict[object, set[str]] = defaultdict(set)
        for ann in _objects(coco, "annotations"):
            if _is_region(ann):
                regions += 1
                continue
            category = categories.get(ann.get("category_id"))
            if not category:
                out.problems.append(
                    Problem(
                        f"{name}: annotation {ann.get('id')}",
                        f"category {ann.get('category_id')} is not in the file's categories",
                    )
                )
                continue
            if keep is None or category in keep:
                classes[ann.get("image_id")].add(category)
        base = posixpath.dirname(name)
        split = _split_of(name)
        for img in _objects(coco, "images"):
            given = [v.strip() for v in (img.get("file_name"), img.get("coco_url")) if isinstance(v, str)]
            origin = given[0] if given else f"{name}: image {img.get('id')}"
            try:
                ref = locate([n for n in given if n], base, present)
                tags = tuple(_no_separator(sorted(classes.get(img.get("id"), ()))))
            except ValueError as exc:
                out.problems.append(Problem(origin, str(exc)))
                continue
            if tags:
                out.records.append(Record(ref=ref, origin=origin, tags=tags, split=split))
            else:
                out.left_out.append(ref)
    only_counted(
        out,
        names[0],
        regions,
        "boxes or polygons",
        "export an image classification project (classes per photo)",
    )
    if out.left_out:
        out.notes.append(
            f"{len(out.left_out)} images have no class (not labelled yet, or only boxes), left out"
        )
    if keep is not None:
        missing = sorted(keep - {t for r in out.records for t in r.tags})
        if missing:
            out.notes.append(f"--tags-column names classes no photo has: {', '.join(missing)}")
    return out


def _load(data: bytes, name: str) -> Mapping:
    try:
        coco = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{name} is not JSON ({exc})") from exc
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise FormatError(f"{name} is not a COCO file: no images list in it")
    return coco


def _objects(coco: Mapping, key: str) -> list[Mapping]:
    value = coco.get(key)
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _is_region(ann: Mapping) -> bool:
    """A box with a size or a polygon: a region of the photo, not the photo's class."""
    bbox, segmentation = ann.get("bbox"), ann.get("segmentation")
    boxed = (
        isinstance(bbox, list) and len(bbox) == 4 and any(v for v in bbox[2:] if isinstance(v, int | float))
    )
    return boxed or bool(segmentation)


def _split_of(name: str) -> str | None:
    """The split a file's folder says (``valid/_annotations.coco.json``), else a word of its name
    (``instances_train.json``, ``labels-test.json``)."""
    found = split_of_path(posixpath.dirname(name))
    if found is not None:
        return found
    words = _SPLIT_WORD.split(posixpath.splitext(posixpath.basename(name))[0])
    return next((s for s in (split_of_path(w) for w in words if w) if s), None)
