"""CVAT's "CVAT for images 1.1" XML: an image's ``<tag>`` labels are its tags."""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.parsers import expat

from lightbox.label_formats.records import (
    _WINDOWS_PATH,
    SPLIT_ALIASES,
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    _no_separator,
    _only_columns,
    _text,
    outside,
    parse_score_cell,
    parse_split,
    ref_of,
)

# CVAT's object annotations: each labels a region of the image, not the image.
_CVAT_SHAPES = frozenset({"box", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton"})
# Tags a model proposed (CVAT's automatic annotation), as CVAT marks them.
_CVAT_MODEL_SOURCES = frozenset({"auto", "semi-auto"})


@dataclass
class _CvatTag:
    label: str
    source: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class _CvatImage:
    name: str
    subset: str | None
    tags: list[_CvatTag] = field(default_factory=list)
    shapes: Counter[str] = field(default_factory=Counter)


def _read_cvat_xml(data: bytes, name: str) -> tuple[list[_CvatImage], int]:
    """The ``<image>`` elements of a "CVAT for images" XML and the number of ``<track>`` elements (a
    "CVAT for video" export). Read by expat as a stream; a DTD is refused before anything is expanded:
    CVAT never writes one, and only a DTD can declare the entities of an XML bomb."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    images: list[_CvatImage] = []
    path: list[str] = []
    tracks = 0
    value: list[str] | None = None  # the text of the tag <attribute> being read
    value_name = ""

    def refuse_dtd(*_: object) -> None:
        raise FormatError(
            f"{name} declares a DTD, which CVAT never writes (its entities could expand without bound): "
            "refused; export the annotations from CVAT again"
        )

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal tracks, value, value_name
        if not path and tag != "annotations":
            raise FormatError(f"{name} is not a CVAT export: its root is <{tag}>, not <annotations>")
        parent = path[-1] if path else ""
        path.append(tag)
        if parent == "annotations" and tag == "image":
            images.append(_CvatImage(attrs.get("name", "").strip(), _text(attrs.get("subset"))))
        elif parent == "annotations" and tag == "track":
            tracks += 1
        elif parent == "image" and tag == "tag":
            images[-1].tags.append(_CvatTag(attrs.get("label", "").strip(), attrs.get("source", "")))
        elif parent == "image" and tag in _CVAT_SHAPES:
            images[-1].shapes[tag] += 1
        elif tag == "attribute" and path[-3:-1] == ["image", "tag"]:
            value, value_name = [], attrs.get("name", "").strip()

    def end(tag: str) -> None:
        nonlocal value
        path.pop()
        if tag == "attribute" and value is not None:
            images[-1].tags[-1].attributes[value_name] = "".join(value).strip()
            value = None

    def text(chunk: str) -> None:
        if value is not None:
            value.append(chunk)

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise FormatError(
            f"{name} is not well-formed XML ({expat.ErrorString(exc.code)}, line {exc.lineno}): "
            "export the annotations from CVAT again"
        ) from None
    return images, tracks


def parse_cvat(data: bytes, name: str, files: Sequence[str], columns: Columns) -> Parsed:
    """A CVAT "CVAT for images 1.1" export (``annotations.xml``): an image's tags are its image-level
    ``<tag>`` labels. Boxes, polygons and the other shapes label a region of the image (a dog in a
    corner is not a photo of a dog), so they are counted in a note, never taken as tags. A tag's
    ``<attribute>`` is the score only when ``--score-column`` names it; an image's ``subset`` is its
    split when every subset is a split's name. Image names are relative to the XML's folder, or to
    ``images/`` beside it (where CVAT puts the photos of an export with images)."""
    images, tracks = _read_cvat_xml(data, name)
    if not images:
        if tracks:
            raise FormatError(
                f"{name} is a 'CVAT for video' export ({tracks} tracks, no <image>): "
                "export the task as 'CVAT for images 1.1'"
            )
        raise FormatError(f"{name} holds no <image>: export the task as 'CVAT for images 1.1'")
    _only_columns(name, columns, ("score",), "an image's tags are its <tag> labels")
    shapes = sum((i.shapes for i in images), Counter[str]())
    shown = ", ".join(f"{kind} {n}" for kind, n in shapes.most_common())
    n_tags = sum(len(i.tags) for i in images)
    if not n_tags:
        why = "an object annotation labels a region, not the photo; " if shapes else ""
        raise FormatError(
            f"{name} holds {f'{shapes.total()} object annotations ({shown}) and ' if shapes else ''}no "
            f"image-level <tag>: {why}tag the photos in CVAT (Tag annotations) and export again"
        )
    notes = []
    if shapes:
        notes.append(
            f"{shapes.total()} object annotations ({shown}) not read: each labels a region, not the photo"
        )
    attributes = list(dict.fromkeys(a for i in images for t in i.tags for a in t.attributes))
    if columns.score is not None and columns.score not in attributes:
        raise FormatError(
            f"{name}: no tag attribute {columns.score!r} for the score "
            f"(tag attributes: {', '.join(attributes) or 'none'})"
        )
    unused = [a for a in attributes if a != columns.score]
    if unused:
        numeric = [a for a in unused if _all_cvat_numbers(images, a)]
        hint = f" ({numeric[0]!r} holds numbers: if it is the score, give --score-column {numeric[0]})"
        notes.append(f"tag attributes not used: {', '.join(unused)}{hint if numeric else ''}")
    subsets = {i.subset for i in images if i.subset and i.subset.lower() != "default"}
    read_subsets = all(s.lower() in SPLIT_ALIASES for s in subsets)
    if subsets and not read_subsets:
        notes.append(f"subsets {', '.join(sorted(subsets))} are not all split names: not read as splits")
    base = posixpath.dirname(name)
    present = set(files)
    records: list[Record] = []
    problems: list[Problem] = []
    for image in images:
        origin = image.name or f"{name} <image> without a name"
        try:
            ref = _cvat_ref(base, image.name, present, image.subset)
            records.append(
                Record(
                    ref=ref,
                    origin=origin,
                    score=_cvat_score(image, columns.score),
                    tags=tuple(sorted(set(_no_separator([t.label for t in image.tags if t.label])))),
                    split=parse_split(image.subset) if read_subsets and image.subset in subsets else None,
                )
            )
        except ValueError as exc:
            problems.append(Problem(origin, str(exc)))
    untagged = sum(1 for i in images if not i.tags)
    if untagged:
        notes.append(
            f"{untagged} images have no <tag>: imported with no tags (if they are not labelled yet, "
            "finish them in CVAT, or export only the finished jobs)"
        )
    by_model = sum(1 for i in images for t in i.tags if t.source in _CVAT_MODEL_SOURCES)
    if by_model:
        notes.append(f"{by_model} tags were proposed by a model (source auto or semi-auto), taken as labels")
    return Parsed("cvat", records, problems, notes, score_name=columns.score, has_tags=True)


def _cvat_score(image: _CvatImage, attribute: str | None) -> float | None:
    """The number an image's tags give in ``attribute``; ValueError when two of its tags disagree."""
    values = sorted({t.attributes[attribute] for t in image.tags if attribute in t.attributes})
    if len(values) > 1:
        raise ValueError(f"its tags give different {attribute} values ({', '.join(values)})")
    return parse_score_cell(values[0]) if values else None


def _all_cvat_numbers(images: Sequence[_CvatImage], attribute: str) -> bool:
    values = [t.attributes[attribute] for i in images for t in i.tags if attribute in t.attributes]
    try:
        return all(parse_score_cell(v) is not None for v in values) and bool(values)
    except ValueError:
        return False


def _cvat_ref(base: str, image: str, present: set[str], subset: str | None = None) -> str:
    """Where a CVAT image name points: beside the XML, else in ``images/`` beside it, else in
    ``images/<subset>/`` (a project export, where two subsets may hold the same name)."""
    if not image:
        raise ValueError("an <image> without a name")
    if _WINDOWS_PATH.match(image):
        raise ValueError("a Windows path: CVAT writes names relative to the task's files")
    ref = ref_of(base, image)
    if outside(ref):
        raise ValueError("the name points outside the export's folder")
    rel = ref[len(base) :].lstrip("/")
    candidates = [posixpath.join(base, "images", rel)]
    if subset:
        candidates += [posixpath.join(base, "images", subset, rel), posixpath.join(base, subset, rel)]
    return next((c for c in candidates if ref not in present and c in present), ref)
