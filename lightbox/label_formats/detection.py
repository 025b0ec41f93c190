"""Which format a source is in: from its file names, else from its labels files' first bytes."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence

from lightbox.imaging import is_image_name
from lightbox.label_formats.azureml import AZUREML_LINE
from lightbox.label_formats.celeba_ava import _sniff_text
from lightbox.label_formats.cloud import GROUNDTRUTH_LINE, VERTEX_CSV_LINE, VERTEX_LINE
from lightbox.label_formats.coco import COCO_HEAD
from lightbox.label_formats.hf_parquet import parquet_files
from lightbox.label_formats.labelbox import LABELBOX_HEAD
from lightbox.label_formats.records import FormatError
from lightbox.label_formats.tables import OTHER_SPREADSHEETS, TABLE_SUFFIXES, metadata_files

FORMATS: tuple[str, ...] = (
    "imagefolder",
    "labelstudio",
    "classfolders",
    "cvat",
    "fiftyone",
    "celeba",
    "ava",
    "parquet",
    "groundtruth",
    "vertex",
    "labelbox",
    "azureml",
    "coco",
)


def detect(
    files: Sequence[str], source_is_file: bool = False, head: Callable[[str], bytes] | None = None
) -> str:
    """The format of a source from its file list (paths relative to the source, '/'-separated) and,
    given ``head`` (a file's first bytes), the content of the labels files whose name does not tell."""
    if source_is_file:
        name = posixpath.basename(files[0]) if files else ""
        sniffed = sniff(name, head(files[0])) if head is not None and files else None
        if sniffed is not None:
            return sniffed
        if name.lower().endswith(TABLE_SUFFIXES):
            return "imagefolder"
        if name.lower().endswith(".json"):
            return "labelstudio"
        if name.lower().endswith(".parquet"):
            return "parquet"
        if name.lower().endswith(OTHER_SPREADSHEETS):
            raise FormatError(
                f"{name!r}: lightbox reads Excel .xlsx workbooks and CSV; save it as one of them"
            )
        raise FormatError(
            f"{name!r} is not a labels file lightbox reads: a table (.csv, .tsv, .jsonl, .xlsx), a Label "
            "Studio or FiftyOne JSON export, a CVAT annotations.xml, a CelebA attribute list, AVA's AVA.txt, "
            "a Hugging Face .parquet, a SageMaker Ground Truth manifest, a Vertex AI import file, a Labelbox "
            "export (.ndjson or .json) or an Azure Machine Learning labels export (.jsonl)"
        )
    if metadata_files(files):
        return "imagefolder"
    if head is not None:
        sniffed = next((f for f in (sniff(n, head(n)) for n in sniffable(files)) if f), None)
        if sniffed is not None:
            return sniffed
    if parquet_files(files):  # a Hugging Face dataset's shards (data/train-00000-of-00001.parquet)
        return "parquet"
    top = [f for f in files if "/" not in f]
    if any(f.lower().endswith(".json") for f in top):
        return "labelstudio"
    tables = [f for f in top if f.lower().endswith(TABLE_SUFFIXES)]
    if tables:
        # A labels file under another name: never guess class folders from its images' folder.
        # A Kaggle download holds train.csv beside sample_submission.csv: the labels are rarely in a
        # submission or test file, so those are named last.
        tables.sort(key=lambda t: ("submission" in t.lower() or "test" in t.lower(), t))
        raise FormatError(
            f"found {', '.join(tables)} but no metadata.csv or metadata.jsonl: give the labels file "
            f"itself as SOURCE (SOURCE/{tables[0]}; its file names are read relative to it, or found "
            "in the folders below it), or name it metadata.csv"
        )
    if any(f.count("/") >= 1 and is_image_name(f) for f in files):
        return "classfolders"
    raise FormatError(
        "cannot tell the format: expected a metadata.csv or metadata.jsonl (imagefolder), a Label "
        "Studio .json export, a CVAT annotations.xml, a FiftyOne labels.json or samples.json, a CelebA "
        "attribute list, AVA's AVA.txt, Hugging Face parquet shards, a SageMaker Ground Truth manifest, a "
        "Vertex AI import file, a Labelbox export, an Azure Machine Learning labels export, a COCO file of "
        "image classes, or one folder "
        "of images per tag "
        "(classfolders); use --format to force one"
    )


# How much of a labels file is read to tell its format by content.
SNIFF_BYTES = 65_536
_SNIFFED_SUFFIXES = (".xml", ".json", ".txt", ".manifest", ".jsonl", ".ndjson", ".csv")
_SNIFFED_MAX = 64  # files looked into: a folder may hold a sidecar per photo


def sniffable(files: Sequence[str]) -> list[str]:
    """The files whose content may tell the format: at the top or one folder down (CelebA's ``Anno/``),
    top first; sidecars of a photo (``IMG_1.jpg.json``) left out."""
    found = [
        f
        for f in files
        if f.count("/") <= 1
        and f.lower().endswith(_SNIFFED_SUFFIXES)
        and not is_image_name(posixpath.splitext(f)[0])
    ]
    return sorted(found, key=lambda f: (f.count("/"), f))[:_SNIFFED_MAX]


def sniff(name: str, head: bytes) -> str | None:
    """The format a labels file's first bytes show, or None when they show none that is read here."""
    if name.lower().endswith(".xml"):
        return "cvat" if _xml_root(head) == "annotations" else None
    head = head.removeprefix(b"\xef\xbb\xbf")
    if name.lower().endswith(".json") and (_FIFTYONE_JSON.match(head) or _ETA_MANIFEST in head[:4096]):
        return "fiftyone"
    if name.lower().endswith(".json") and COCO_HEAD.match(head):
        return "coco"
    if name.lower().endswith((".json", ".jsonl", ".manifest", ".ndjson")):
        # JSON lines of a labelling service: Ground Truth's output.manifest, Vertex AI's export, Labelbox's
        # NDJSON (or its JSON list), Azure Machine Learning's labels export
        for fmt, first in (
            ("groundtruth", GROUNDTRUTH_LINE),
            ("vertex", VERTEX_LINE),
            ("labelbox", LABELBOX_HEAD),
            ("azureml", AZUREML_LINE),
        ):
            if first.match(head):
                return fmt
        return None
    if name.lower().endswith(".csv"):
        return "vertex" if VERTEX_CSV_LINE.match(head) else None
    if name.lower().endswith(".txt"):
        return _sniff_text(head, complete=len(head) < SNIFF_BYTES)
    return None


# FiftyOne's labels.json ({"classes": ..., "labels": ...}) and samples.json ({"samples": [...]}); a Label
# Studio export is a list.
_FIFTYONE_JSON = re.compile(rb'\s*\{\s*"(?:classes|labels|samples)"\s*:')
_ETA_MANIFEST = b'"eta.core.datasets.'  # FiftyOneImageLabelsDataset's manifest.json


# What may come before an XML document's root element: declaration, comments, a DOCTYPE (whose
# internal subset a bomb fills with entities: skipped here, refused by the reader).
_XML_PROLOG = re.compile(rb"(?:\s+|<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^\[>]*(?:\[.*?\])?\s*>)*", re.S)
_XML_ELEMENT = re.compile(rb"<([A-Za-z_][\w.:-]*)")


def _xml_root(head: bytes) -> str | None:
    """The name of an XML document's root element, from its first bytes."""
    head = head.removeprefix(b"\xef\xbb\xbf")
    prolog = _XML_PROLOG.match(head)
    found = _XML_ELEMENT.match(head, prolog.end() if prolog else 0)
    return found.group(1).decode("ascii", "replace") if found else None
