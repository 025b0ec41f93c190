"""Azure Machine Learning data labeling: an image classification project exported as an Azure ML dataset
(MLTable's JSON lines, the AutoML for images schema): ``image_url`` (``azureml://subscriptions/.../
datastores/<store>/paths/<path>``, or ``AmlDatastore://<store>/<path>`` as older exports write it),
``label`` (a class name, multi-class; a list of them, multi-label), ``label_confidence`` (1.0 for a
labeler's label, lower for an ML-assisted one: not read), ``image_details``.

The classes are the photo's tags; an object detection or segmentation project's labels (a list of
boxes or polygons) label regions and are only counted; an image without a label is left out and
counted. Photos are found in the source by the longest ending of their datastore path (the datastore's
folder copied down beside the file, with azcopy or the Storage Explorer).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Collection, Mapping, Sequence

from lightbox.label_formats.cloud import _json_lines
from lightbox.label_formats.records import (
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    _no_separator,
    _only_columns,
    only_counted,
)
from lightbox.label_formats.uris import locate

# An export's first line (sniffed by lightbox.label_formats.detection): an image_url in a datastore.
AZUREML_LINE = re.compile(rb'\s*\{[^\n]*"image_url"\s*:\s*"(?:azureml|AmlDatastore)://', re.I)


def parse_azureml(
    read: Callable[[str], bytes], exports: Sequence[str], files: Collection[str], columns: Columns
) -> Parsed:
    _only_columns(exports[0], columns, (), "an Azure Machine Learning export's labels are its label field")
    out = Parsed("azureml", [], has_tags=True)
    present = frozenset(files)
    regions = 0
    for name in exports:
        base = posixpath.dirname(name)
        for origin, row in _json_lines(read(name), name, out):
            image = row.get("image_url")
            if not isinstance(image, str) or not image.strip():
                out.problems.append(Problem(origin, "no image_url"))
                continue
            try:
                ref = locate([image.strip()], base, present)
                tags, n_regions = _tags(row.get("label"))
            except ValueError as exc:
                out.problems.append(Problem(image, str(exc)))
                continue
            regions += n_regions
            if tags:
                out.records.append(Record(ref=ref, origin=image, tags=tags))
            else:
                out.left_out.append(ref)
    if not out.records and not out.left_out:
        raise FormatError(
            f"{exports[0]} holds no line with an image_url: it is not an Azure Machine Learning labels export"
        )
    only_counted(out, exports[0], regions, "boxes or polygons", "export an image classification project")
    if out.left_out:
        out.notes.append(
            f"{len(out.left_out)} images have no class (not labelled yet, or only boxes), left out"
        )
    return out


def _tags(label: object) -> tuple[tuple[str, ...], int]:
    """A line's classes (a name, or a list of names), or () and the boxes or polygons it holds instead."""
    if label is None or label == "":
        return (), 0
    if isinstance(label, str):
        return tuple(_no_separator([label.strip()])), 0
    if isinstance(label, list) and all(isinstance(x, Mapping) for x in label):
        return (), len(label)  # object detection, instance segmentation: {"label", "topX", ...}
    if isinstance(label, list) and all(isinstance(x, str) for x in label):
        return tuple(sorted(set(_no_separator([x.strip() for x in label if x.strip()])))), 0
    raise ValueError(f"label {str(label)[:60]!r} is not a class name or a list of them")
