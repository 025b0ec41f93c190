"""Labelled-image export formats -> one list of records. Pure parsing: no image is read here.

The formats, detected from the source's files and, where names do not tell, the labels files' first
bytes (``detect``), or forced:

- ``imagefolder`` (Hugging Face): ``metadata.jsonl`` / ``metadata.csv`` with a ``file_name`` column
  (relative to the metadata file), a score column, a tags column, optional split and group columns;
  or split subfolders (``train/``, ``validation/`` or ``val/``, ``test/``) each with its own metadata.
- ``labelstudio``: a Label Studio export of an image project, ``JSON`` (tasks with
  ``annotations[].result[]``) or ``JSON_MIN`` (one flat row per annotation); ``Choices`` for tags,
  ``Rating`` or ``Number`` for the score. Several annotations of a task: the mean score, and a tag
  counts when most annotators chose it.
- ``classfolders`` (torchvision ImageFolder): ``root/<tag>/<image>``; no score.
- ``cvat``: CVAT's "CVAT for images 1.1" XML; an image's ``<tag>`` labels are its tags (object
  annotations label a region, not the photo), a tag attribute named with --score-column the score.
- ``fiftyone``: FiftyOne's ``FiftyOneImageClassificationDataset`` (``labels.json`` beside ``data/``)
  and ``FiftyOneDataset`` (``samples.json``: Classification(s) fields for tags, Regression for scores).
- ``celeba``: an attribute list in CelebA's layout (``list_attr_celeba.txt``): -1/1 flags, one-hot tags.
- ``ava``: AVA's ``AVA.txt`` (vote counts for the scores 1..10): the score is the mean vote.
- ``parquet``: Hugging Face's parquet shards, images embedded as bytes, ClassLabel names in the schema.

A row that cannot be read becomes a ``Problem`` (origin, reason) for the report; the others go on.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import datetime
import io
import json
import math
import posixpath
import re
import unicodedata
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree
from xml.parsers import expat

from lightbox.imaging import describe_by_extension, extension, is_image_name
from lightbox.manifest import OPTIONAL_COLUMNS, SPLITS

FORMATS: tuple[str, ...] = (
    "imagefolder",
    "labelstudio",
    "classfolders",
    "cvat",
    "fiftyone",
    "celeba",
    "ava",
    "parquet",
)
# Roboflow writes ``_classes.csv`` (a file column and one 0/1 column per class) in each split's folder.
METADATA_FILES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv", "_classes.csv")
SPLIT_ALIASES: Mapping[str, str] = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
    "eval": "test",  # as Hugging Face's datasets read them
    "evaluation": "test",
}
# Where no column is named: the score's and the tags' usual names, in order (said in a note).
SCORE_COLUMNS: tuple[str, ...] = ("score", "rating", "stars")
TAGS_COLUMNS: tuple[str, ...] = ("tags", "tag", "labels", "label", "choice", "choices")
# A labels file given as SOURCE (any name), read as imagefolder metadata.
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".xlsx")
# Spreadsheets lightbox does not open: saved as .xlsx or CSV, they are read.
OTHER_SPREADSHEETS: tuple[str, ...] = (".xls", ".xlsm", ".xlsb", ".ods", ".numbers")
# The image file column when there is no ``file_name`` (Hugging Face's name): what other tools write.
FILE_COLUMNS: tuple[str, ...] = (
    "file_name",
    "filename",
    "file",
    "filepath",
    "file_path",
    "image",
    "image_path",
    "image_name",
    "image_file",
    "image_id",  # Kaggle's and CelebA's tables (an id without extension: matched to the file)
    "img",
    "img_name",
    "path",
    "id",  # Kaggle's train.csv (id,label): last, since a table's own row id is often called id
)
# Label Studio's own keys in a JSON_MIN row: never a label column.
_LS_META = {
    "id",
    "annotator",
    "annotation_id",
    "created_at",
    "updated_at",
    "lead_time",
    "agreement",
    "drafts",
}
_LS_SCORE_TYPES = ("rating", "number")
_LS_TAG_TYPES = ("choices", "taxonomy")


class FormatError(ValueError):
    """The source is not in the (detected or forced) format: one line saying what to do."""


@dataclass
class Record:
    """One labelled image as the source declares it."""

    ref: str  # where the image is: relative to the source root, an absolute local path, or s3://...
    origin: str  # how the user knows it (the file name, or the Label Studio task)
    score: float | None = None  # None: not labelled
    tags: tuple[str, ...] = ()
    split: str | None = None  # one of SPLITS when the source gives it
    group: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # OPTIONAL_COLUMNS found in the source


@dataclass
class Problem:
    origin: str
    reason: str
    ref: str | None = None  # the file it is about, when there is one (copied to the quarantine)


@dataclass
class Parsed:
    format: str
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # dataset-level remarks (unknown columns, ...)
    score_name: str | None = None  # the score column or control; None: no scores in this source
    has_tags: bool = False
    # Photos the labels name and leave out on purpose (not labelled yet): not listed as unlisted.
    left_out: list[str] = field(default_factory=list)
    score_range: tuple[float, float] | None = None  # the scale the format defines (AVA's 1..10)


@dataclass(frozen=True)
class Columns:
    """Which source columns (or Label Studio control names) hold what."""

    score: str | None = None
    tags: str | None = None
    split: str | None = None
    group: str | None = None


# --- shared cell parsing --------------------------------------------------------------------------------


def parse_tags_cell(value: object, by_space: bool = False) -> tuple[str, ...]:
    """A JSON list, a Label Studio ``{"choices": [...]}``, or text separated by ``|``, ``;`` or ``,``
    (or, ``by_space``, by spaces: see ``space_separated``)."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        value = value.get("choices", value.get("labels", []))
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        text = str(value).strip()
        if not text:
            return ()
        if text.startswith("["):
            return parse_tags_cell(_list_literal(text))
        sep = next((s for s in ("|", ";", ",") if s in text), None)
        items = text.split(sep) if sep else text.split() if by_space else [text]
    return tuple(sorted(set(_no_separator([t.strip() for t in items if t.strip()]))))


def space_separated(cells: Sequence[object]) -> bool:
    """Whether a tags column separates its tags by spaces, as Kaggle's tables write them
    (``agriculture clear primary``): no cell uses another separator or a list, some hold several
    words, and either the same words come in another order (``beach night``, ``night beach``) or
    there are at least 1.5 times as many different cells as different words, as combinations of a
    few tags make (Planet's 17 tags: 449 different cells). Class names (``car``, ``race car``,
    ``sports car``) bring new words with each."""
    if any(isinstance(c, (list, tuple, Mapping)) for c in cells):
        return False
    texts = [t for t in (str(c).strip() for c in cells if c is not None) if t]
    if any(t.startswith(("[", "{")) or any(sep in t for sep in "|;,") for t in texts):
        return False
    if not any(len(t.split()) > 1 for t in texts):
        return False
    words = {w for t in texts for w in t.split()}
    distinct = {" ".join(t.split()) for t in texts}
    reordered = len(distinct) > len({" ".join(sorted(c.split())) for c in distinct})  # "a b", "b a"
    return reordered or 2 * len(distinct) >= 3 * len(words)


def _no_separator(tags: list[str]) -> list[str]:
    """``tags``, or ValueError when one holds '|', which lightbox's own cells use between tags."""
    bad = [t for t in tags if "|" in t]
    if bad:
        raise ValueError(f"tag {bad[0]!r} contains '|', which lightbox reserves as its separator")
    return tags


_FLAG_TRUE = frozenset({"1", "1.0", "true", "yes", "y"})
_FLAG_FALSE = frozenset({"0", "0.0", "-1", "-1.0", "false", "no", "n"})


def parse_flag(value: object) -> bool | None:
    """A one-hot cell: True (1, true, yes), False (0, -1 as CelebA writes it, false, no, empty), or
    None when it is not a flag."""
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in _FLAG_TRUE:
        return True
    if not text or text in _FLAG_FALSE:
        return False
    return None


def _list_literal(text: str) -> list:
    """A list written as JSON, or as Python writes it (pandas' ``to_csv`` of a list column)."""
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        try:
            loaded = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            loaded = None
    if not isinstance(loaded, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in loaded):
        raise ValueError(f"tags {text[:60]!r} look like a list but do not parse")
    return list(loaded)


_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")
_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d+,\d+\s*")
_PERCENT_OR_OUT_OF = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*(?:%|/\s*\d+(?:\.\d+)?)\s*")
# What spreadsheets and pandas write in a cell that has no value: read as an empty cell.
_MISSING = frozenset({"", "n/a", "na", "#n/a", "nan", "null", "none", "-", "--", "?"})


def parse_score_cell(value: object, decimal_comma: bool = False) -> float | None:
    """None for an empty cell; ValueError for text that is not a finite number. ``decimal_comma``: the
    file writes 2,5 for 2.5 (a semicolon-separated sheet from a European Excel)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _MISSING):
        return None
    if isinstance(value, bool):
        raise ValueError(f"score {value!r} is not a number")
    if isinstance(value, str) and value.lstrip().startswith(("[{", "{")):  # JSON in a CSV cell
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    if isinstance(value, list) and len(value) == 1:  # Label Studio JSON_MIN: [{"rating": 4}]
        value = value[0]
    if isinstance(value, Mapping) and len(value) == 1:  # {"rating": 4} as some exports write it
        value = next(iter(value.values()))
    if decimal_comma and isinstance(value, str) and _DECIMAL_COMMA.fullmatch(value):
        value = value.replace(",", ".")
    if isinstance(value, str) and (found := _PERCENT_OR_OUT_OF.fullmatch(value)):
        value = found.group(1)  # "85%" is 85, "4/5" is 4: the scale is the score range
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"score {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(score):
        raise ValueError(f"score {value!r} is not a finite number")
    return score


def parse_split(value: object) -> str | None:
    if value is None or not str(value).strip():
        return None
    split = SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise ValueError(f"split {str(value)[:40]!r} is not one of {', '.join(SPLITS)} (or val, dev, test)")
    return split


def _text(value: object) -> str | None:
    return None if value is None or not str(value).strip() else str(value).strip()


# --- detection ------------------------------------------------------------------------------------------


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
            "Studio or FiftyOne JSON export, a CVAT annotations.xml, a CelebA attribute list, AVA's AVA.txt "
            "or a Hugging Face .parquet"
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
        "attribute list, AVA's AVA.txt, Hugging Face parquet shards, or one folder of images per tag "
        "(classfolders); use --format to force one"
    )


# How much of a labels file is read to tell its format by content.
SNIFF_BYTES = 65_536
_SNIFFED_SUFFIXES = (".xml", ".json", ".txt")
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
    if name.lower().endswith(".json"):
        head = head.removeprefix(b"\xef\xbb\xbf")
        return "fiftyone" if _FIFTYONE_JSON.match(head) or _ETA_MANIFEST in head[:4096] else None
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


def split_of_path(folder: str) -> str | None:
    """The split a folder names (its deepest segment that is a split's name), as Hugging Face reads
    ``data/train/`` or ``validation/``; None when none does."""
    for segment in reversed([s for s in folder.split("/") if s]):
        split = SPLIT_ALIASES.get(segment.lower())
        if split is not None:
            return split
    return None


# --- imagefolder ----------------------------------------------------------------------------------------


def metadata_files(files: Sequence[str]) -> list[tuple[str, str | None]]:
    """(metadata path, split implied by its folders or None) for every folder holding one, at any depth
    (``data/train/metadata.jsonl``); file names in it are relative to its folder. One per folder."""
    by_dir: dict[str, set[str]] = defaultdict(set)
    for f in files:
        folder, base = posixpath.split(f)
        if base in METADATA_FILES:
            by_dir[folder].add(base)
    found = []
    for folder in sorted(by_dir):
        base = next(m for m in METADATA_FILES if m in by_dir[folder])
        found.append((posixpath.join(folder, base), split_of_path(folder)))
    return found


@dataclass
class _Table:
    rows: list[tuple[int, dict]]  # (line number, row); a row that did not parse has "__error__"
    columns: list[str]
    notes: list[str] = field(default_factory=list)
    decimal_comma: bool = False


def _decode_text(name: str, data: bytes) -> tuple[str, list[str]]:
    """A labels file's text: UTF-8 (with or without BOM), UTF-16 with its BOM (Excel's "Unicode text"),
    else Windows-1252, said in a note."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), []
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        note = f"{name} is not UTF-8: read as Windows-1252 (save it as UTF-8 if names or tags look wrong)"
        return data.decode("cp1252", errors="replace"), [note]


def _read_table(name: str, data: bytes) -> _Table:
    """The rows of a labels file (JSON lines, an Excel workbook, or CSV/TSV with the separator its
    header uses)."""
    if name.lower().endswith(".xlsx"):
        return _read_workbook(name, data)
    text, notes = _decode_text(name, data)
    rows: list[tuple[int, dict]] = []
    if name.lower().endswith(".jsonl"):
        columns: dict[str, None] = {}
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((i, {"__error__": f"line {i} is not JSON: {exc.msg}"}))
                continue
            if not isinstance(row, dict):
                rows.append((i, {"__error__": f"line {i} is not a JSON object"}))
                continue
            columns |= dict.fromkeys(row)
            rows.append((i, row))
        return _Table(rows, list(columns), notes)
    header = next((line for line in text.splitlines() if line.strip()), "")
    # The separator the header uses most: Excel writes ";" where the decimal mark is a comma.
    delimiter = max((",", ";", "\t"), key=lambda d: (header.count(d), d == ","))
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, restkey="__extra__")
    names = list(reader.fieldnames or ())
    lines = io.StringIO(text).readlines()  # as the reader counts them, for a row to be split again
    after = reader.line_num  # the line the previous row ended on
    bare_json = 0
    for row in reader:
        at, start, after = reader.line_num, after, reader.line_num
        if "__extra__" in row:
            fields = _split_around_json("".join(lines[start:at]).strip("\r\n"), delimiter)
            if fields is None or len(fields) != len(names):
                n = len(names) + len(row["__extra__"])
                error = (
                    f"line {at} has {n} fields, the header {len(names)}: quote values that contain "
                    f"{delimiter!r}"
                )
                rows.append((at, {"__error__": error}))
                continue
            row, bare_json = dict(zip(names, fields, strict=True)), bare_json + 1
        if not any((v or "").strip() for v in row.values()):
            continue  # a spreadsheet's blank rows
        rows.append((at, row))
    if bare_json:
        notes.append(f"{name}: {bare_json} rows hold JSON cells without quotes, read by their brackets")
    return _Table(rows, names, notes, decimal_comma=delimiter != ",")


def _split_around_json(line: str, delimiter: str) -> list[str] | None:
    """The fields of a CSV line whose JSON cells are not quoted (an older Label Studio converter writes
    ``{"choices": ["a", "b"]}`` bare), so that the delimiters inside them split nothing: a delimiter
    splits only outside brackets, JSON strings and quoted fields. None unless every bracketed field
    is valid JSON: then the line is not that, and stays the user's to quote."""
    cells: list[str] = []
    cell: list[str] = []
    depth, in_string, i = 0, False, 0
    while i < len(line):
        ch = line[i]
        if not depth and not cell and ch == '"':  # a field quoted as CSV quotes it ("" is one quote)
            i += 1
            while i < len(line) and (line[i] != '"' or line[i + 1 : i + 2] == '"'):
                cell.append(line[i])
                i += 2 if line[i] == '"' else 1
            i += 1
            continue
        if in_string and ch == "\\":
            cell.append(line[i : i + 2])
            i += 2
            continue
        if in_string:
            in_string = ch != '"'
        elif depth and ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}" and depth:
            depth -= 1
        elif ch == delimiter and not depth:
            cells.append("".join(cell))
            cell = []
            i += 1
            continue
        cell.append(ch)
        i += 1
    cells.append("".join(cell))
    for text in cells:
        if text.lstrip().startswith(("[", "{")):
            try:
                json.loads(text)
            except json.JSONDecodeError:
                return None
    return cells


def _read_workbook(name: str, data: bytes) -> _Table:
    """An Excel workbook's rows, read as a CSV's would be (every cell as text, so that an id typed as a
    number is a name, not 1000.0): from the first sheet whose header names the image files, else from
    the first sheet (said in a note when there are several)."""
    import openpyxl  # only an Excel labels file needs it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no default style" and the like: not the user's
            book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            return _read_sheets(name, book)
        finally:
            book.close()
    # What a file that is no workbook raises; and expat's refusal of an entity bomb in a sheet.
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, ElementTree.ParseError) as exc:
        raise FormatError(
            f"{name} is not an Excel workbook lightbox can read ({exc}): save it again"
        ) from None


def _read_sheets(name: str, book: Any) -> _Table:
    headers = {ws.title: _sheet_header(ws.iter_rows(values_only=True)) for ws in book.worksheets}
    with_files = [t for t, (_, header) in headers.items() if _first_named(header, FILE_COLUMNS)]
    title = with_files[0] if with_files else book.worksheets[0].title
    notes = []
    if len(headers) > 1:
        others = f"; {', '.join(with_files[1:])} also name files" if len(with_files) > 1 else ""
        notes.append(f"{name}: read the sheet {title!r} of {len(headers)}{others}")
    at, columns = headers[title]
    rows: list[tuple[int, dict]] = []
    for line, values in enumerate(book[title].iter_rows(min_row=at + 1, values_only=True), start=at + 1):
        cells = [_cell_text(v) for v in values]
        if any(c.strip() for c in cells):  # a sheet's blank rows
            rows.append((line, {c: v for c, v in zip(columns, cells, strict=False) if c}))
    return _Table(rows, [c for c in columns if c], notes)


def _sheet_header(rows: Iterable[Sequence[object]]) -> tuple[int, list[str]]:
    """(row number, column names) of a sheet's first row that holds anything; (0, []) for an empty one."""
    for at, values in enumerate(rows, start=1):
        names = [_cell_text(v).strip() for v in values]
        if any(names):
            return at, names
    return 0, []


def _cell_text(value: object) -> str:
    """A workbook cell as a CSV would hold it: whole numbers without ".0", dates in ISO form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def _first_named(columns: Sequence[str], usual: Sequence[str]) -> str | None:
    """The column with the first of ``usual`` names that is there (in any case), else None."""
    by_name = {_column_key(c): c for c in columns}
    return next((by_name[u] for u in usual if u in by_name), None)


def _column_key(name: str) -> str:
    """A column's name as the usual names are written: "Image name" and "image-name" are image_name."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def _file_column(meta: str, columns: Sequence[str]) -> tuple[str, list[str]]:
    col = _first_named(columns, FILE_COLUMNS)
    if col is None:
        raise FormatError(
            f"{meta} has no column of image file names: name it file_name "
            f"(columns: {', '.join(columns) or 'none'})"
        )
    return col, [] if col == "file_name" else [f"{meta}: image file names from the column {col!r}"]


def _usual_column(columns: Sequence[str], usual: Sequence[str], what: str, notes: list[str]) -> str:
    """The first column with one of a label's usual names (any case); said in a note unless it is the
    first name. The first name when none is there (then the source has no such label)."""
    found = _first_named(columns, usual)
    if found is None:
        return usual[0]
    if found != usual[0]:
        notes.append(f"the {what} column is {found!r} (name another with --{what}-column)")
    return found


def parse_imagefolder(
    files: Sequence[str],
    read: Callable[[str], bytes],
    columns: Columns,
    metas: Sequence[tuple[str, str | None]] | None = None,
    outside_ok: bool = False,
) -> Parsed:
    """``metas``: the labels files to read (default: every metadata.csv/.jsonl under the source).
    ``outside_ok``: file names may lead out of the source's folder (``../photos/a.jpg`` beside a
    labels file given as SOURCE, on a local disk)."""
    metas = list(metas) if metas is not None else metadata_files(files)
    if not metas:
        raise FormatError("no metadata.csv or metadata.jsonl in the source (at any depth)")
    tables = [(meta, split, _read_table(meta, read(meta))) for meta, split in metas]
    all_columns = list(dict.fromkeys(c for _, _, t in tables for c in t.columns))
    notes: list[str] = []
    score_col = columns.score or _usual_column(all_columns, SCORE_COLUMNS, "score", notes)
    split_col = columns.split or "split"
    group_col = columns.group or "group"
    one_hot = _one_hot_columns(tables, columns.tags, all_columns, {score_col, split_col, group_col}, notes)
    tags_col = columns.tags or _usual_column(all_columns, TAGS_COLUMNS, "tags", notes)
    tag_cells = [row.get(tags_col) for _, _, t in tables for _, row in t.rows if "__error__" not in row]
    by_space = not one_hot and space_separated([c for c in tag_cells if c is not None])
    if by_space:
        notes.append(
            f"the {tags_col!r} column separates its tags by spaces "
            f"('{next(c for c in tag_cells if c and len(str(c).split()) > 1)}'): "
            "write '|' between tags to keep a tag of several words"
        )
    records: list[Record] = []
    problems: list[Problem] = []
    seen_columns: set[str] = set()
    file_columns: set[str] = set()
    seen_files: dict[str, Record] = {}
    merged: set[str] = set()
    rated: defaultdict[str, list[float]] = defaultdict(list)  # a repeated image's later rows' scores
    for meta, folder_split, table in tables:
        base = posixpath.dirname(meta)
        notes += table.notes
        if not table.rows:
            notes.append(f"{meta} holds no rows")
            continue
        file_col, file_notes = _file_column(meta, table.columns)
        notes += file_notes
        file_columns.add(file_col)
        seen_columns |= set(table.columns)
        for line, row in table.rows:
            origin = f"{meta}:{line}"
            if "__error__" in row:
                problems.append(Problem(origin, row["__error__"]))
                continue
            name = _text(row.get(file_col))
            if name is None:
                problems.append(Problem(origin, f"no {file_col}"))
                continue
            if _WINDOWS_PATH.match(name):
                problems.append(Problem(name, "a Windows path: give file names relative to the labels file"))
                continue
            # A spreadsheet made on Windows writes sub\\photo.jpg; no photo's name holds a backslash.
            ref = posixpath.normpath(posixpath.join(base, name.replace("\\", "/")))
            origin = ref
            if (ref.startswith("../") or ref == "..") and not outside_ok:
                problems.append(Problem(origin, "file_name points outside the source folder"))
                continue
            try:
                record = Record(
                    ref=ref,
                    origin=origin,
                    score=parse_score_cell(row.get(score_col), table.decimal_comma),
                    tags=(
                        _one_hot_tags(row, one_hot)
                        if one_hot
                        else parse_tags_cell(row.get(tags_col), by_space)
                    ),
                    split=parse_split(row.get(split_col)) or folder_split,
                    group=_text(row.get(group_col)),
                    extra={c: str(row[c]) for c in OPTIONAL_COLUMNS if _text(row.get(c))},
                )
            except ValueError as exc:
                problems.append(Problem(origin, str(exc), ref))
                continue
            first = seen_files.get(ref)
            if first is None:
                seen_files[ref] = record
                records.append(record)
            elif record.split and first.split and record.split != first.split:
                # Not the image's fault: only this row is left out, and the image keeps its first split.
                problems.append(Problem(f"{meta}:{line}", f"{ref} listed again with split {record.split}"))
            else:
                merged.add(ref)  # one row per rater, or per tag: the rows are one image's labels
                first.tags = tuple(sorted({*first.tags, *record.tags}))
                first.split = first.split or record.split
                if record.score is not None:
                    rated[ref].append(record.score)
    if merged:
        for ref in rated:
            first = seen_files[ref]
            scores = ([first.score] if first.score is not None else []) + rated[ref]
            first.score = sum(scores) / len(scores)
        notes.append(
            f"{len(merged)} images are listed on several rows (one per rater, or per tag): each has "
            "the tags of all its rows and the mean of their scores"
        )
    if columns.score and columns.score not in seen_columns:
        raise FormatError(
            f"no score column {columns.score!r} in the metadata (columns: {sorted(seen_columns)})"
        )
    if columns.tags and not one_hot and columns.tags not in seen_columns:
        raise FormatError(
            f"no tags column {columns.tags!r} in the metadata (columns: {sorted(seen_columns)})"
        )
    known = {score_col, tags_col, split_col, group_col, *file_columns, *OPTIONAL_COLUMNS, *one_hot}
    unknown = sorted(c for c in seen_columns - known if c and c.strip())
    if unknown:
        notes.append(f"columns not used (unknown): {', '.join(unknown)}")
    if score_col not in seen_columns and not columns.score:
        numeric = [c for c in unknown if _all_numbers(c, (t for _, _, t in tables))]
        if numeric:
            notes.append(
                f"no score column, but {numeric[0]!r} holds numbers: if it is the score, "
                f"give --score-column {numeric[0]}"
            )
    read_metas = {m for m, _ in metas}
    other = sorted(f for f in files if posixpath.basename(f) in METADATA_FILES and f not in read_metas)
    if other:
        notes.append(f"not read (a metadata.jsonl beside it is): {', '.join(other)}")
    return Parsed(
        format="imagefolder",
        records=records,
        problems=problems,
        notes=notes,
        score_name=score_col if score_col in seen_columns else None,
        has_tags=tags_col in seen_columns or bool(one_hot),
    )


def _all_numbers(column: str, tables: Iterable[_Table]) -> bool:
    """Whether every row of ``tables`` has a number in ``column`` (not only 0 and 1: those are flags)."""
    values = []
    for table in tables:
        for _, row in table.rows:
            try:
                values.append(parse_score_cell(row.get(column)))
            except ValueError:
                return False
    return None not in values and bool(set(values) - {0.0, 1.0})


def _one_hot_columns(
    tables: Sequence[tuple[str, str | None, _Table]],
    asked: str | None,
    all_columns: Sequence[str],
    taken: set[str],
    notes: list[str],
) -> list[str]:
    """The columns that each hold one tag as 0/1 (Roboflow's ``_classes.csv``, CelebA's attributes):
    those named by ``--tags-column A,B,...``; else, when no column has a usual tags name, every other
    column whose values are all flags, with at least one set. [] when the tags are in one column."""
    by_name = {c.strip(): c for c in all_columns}
    if asked is not None:
        if asked in all_columns or "," not in asked:
            return []
        names = [n.strip() for n in asked.split(",") if n.strip()]
        missing = [n for n in names if n not in by_name]
        if missing:
            raise FormatError(
                f"no column {missing[0]!r} for --tags-column (columns: {', '.join(sorted(by_name))})"
            )
        return [by_name[n] for n in names]
    if _first_named(all_columns, TAGS_COLUMNS) is not None:
        return []
    rows = [row for _, _, table in tables for _, row in table.rows if "__error__" not in row]
    free = {_column_key(c) for c in (*taken, *FILE_COLUMNS, *OPTIONAL_COLUMNS)}
    found = []
    for column in all_columns:
        if _column_key(column) in free:
            continue
        flags = [parse_flag(row.get(column)) for row in rows]
        if flags and None not in flags and any(flags):
            found.append(column)
    if found:
        shown = ", ".join(c.strip() for c in found[:8]) + (
            f" and {len(found) - 8} more" if len(found) > 8 else ""
        )
        notes.append(
            f"tags from {len(found)} one-hot columns ({shown}): a row has the tags whose column is 1 "
            "(name the tag columns yourself with --tags-column A,B,...)"
        )
    return found


def _one_hot_tags(row: Mapping[str, object], columns: Sequence[str]) -> tuple[str, ...]:
    """The tags of a one-hot row: the (stripped) names of its columns that hold a true flag."""
    tags = []
    for column in columns:
        flag = parse_flag(row.get(column))
        if flag is None:
            raise ValueError(f"{column.strip()} is {str(row.get(column))[:20]!r}, not 0 or 1")
        if flag:
            tags.append(column.strip())
    return tuple(sorted(_no_separator(tags)))


# --- classfolders ---------------------------------------------------------------------------------------


def parse_classfolders(files: Sequence[str]) -> Parsed:
    """``<tag>/<...>/<image>``: the first folder is the tag; or ``<split>/<tag>/<...>/<image>`` when
    every first folder is a split's name (torchvision's and Hugging Face's train/ and test/). The same
    photo in several folders becomes one image with several tags when the importer merges records by
    content. Files that are not images by name (sidecars, Thumbs.db) are counted in a note."""
    records, problems = [], []
    others: dict[str, int] = defaultdict(int)
    images = [f for f in sorted(files) if not posixpath.basename(f).startswith(".")]
    firsts = {f.split("/", 1)[0] for f in images if "/" in f and is_image_name(f)}
    by_split = bool(firsts) and all(d.lower() in SPLIT_ALIASES for d in firsts)
    for f in images:
        if not is_image_name(f):
            others[extension(f)] += 1
            continue
        parts = f.split("/")
        if len(parts) < (3 if by_split else 2):
            where = "<split>/<tag>/<image>" if by_split else "<tag>/<image>"
            problems.append(Problem(f, f"image outside a tag folder: classfolders expects {where}", f))
            continue
        split = SPLIT_ALIASES[parts[0].lower()] if by_split else None
        records.append(Record(ref=f, origin=f, tags=(parts[1] if by_split else parts[0],), split=split))
    if not records:
        raise FormatError("no <tag>/<image> files found for classfolders")
    tags = sorted({r.tags[0] for r in records})
    if len(tags) < 2:
        raise FormatError(
            f"only one tag folder ({tags[0]}/): classfolders needs a folder per tag, at least two (if "
            f"{tags[0]}/ holds your dataset, as an unzipped archive's folder does, give SOURCE/{tags[0]}); "
            "for labels in a file, put a metadata.csv (file_name, score, tags) beside the photos"
        )
    notes = [f"not images by name, left out: {describe_by_extension(others)}"] if others else []
    return Parsed(format="classfolders", records=records, problems=problems, notes=notes, has_tags=True)


# --- CVAT -----------------------------------------------------------------------------------------------

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


def _only_columns(name: str, columns: Columns, allowed: Sequence[str], why: str) -> None:
    """A column option this format has nothing to apply to is refused, not silently ignored."""
    given = [f"--{k}-column" for k, v in asdict(columns).items() if v is not None and k not in allowed]
    if given:
        raise FormatError(f"{name}: {', '.join(given)} does not apply here ({why})")


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
            ref = _cvat_ref(base, image.name, present)
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


def _cvat_ref(base: str, image: str, present: set[str]) -> str:
    """Where a CVAT image name points: beside the XML, else in ``images/`` beside it."""
    if not image:
        raise ValueError("an <image> without a name")
    if _WINDOWS_PATH.match(image):
        raise ValueError("a Windows path: CVAT writes names relative to the task's files")
    ref = posixpath.normpath(posixpath.join(base, image.replace("\\", "/")))
    if ref.startswith("../") or ref == "..":
        raise ValueError("the name points outside the export's folder")
    in_images = posixpath.join(base, "images", ref[len(base) :].lstrip("/"))
    return in_images if ref not in present and in_images in present else ref


# --- FiftyOne -------------------------------------------------------------------------------------------

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
        ref = posixpath.normpath(posixpath.join(base, sample["filepath"].replace("\\", "/")))
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


# --- attribute lists and vote counts (CelebA, AVA) --------------------------------------------------------

_FLAG_VALUES = frozenset({"-1", "0", "1"})
CELEBA_PARTITION = "list_eval_partition.txt"  # CelebA's own train (0) / validation (1) / test (2) split
_CELEBA_SPLITS = {"0": "train", "1": "validation", "2": "test"}
AVA_SCALE = (1.0, 10.0)  # AVA's votes are for the scores 1..10


def _sniff_text(head: bytes, complete: bool) -> str | None:
    """``celeba`` for an attribute list (a count, a line of attribute names, then ``name -1 1 ...``),
    ``ava`` for AVA's vote counts (15 integers a line), None for anything else. ``complete``: the head is
    the whole file (else its last line may be cut)."""
    lines = [line.split() for line in head.decode("utf-8", "replace").splitlines()]
    lines = [t for t in (lines if complete else lines[:-1]) if t][:20]
    if len(lines) >= 3 and len(lines[0]) == 1 and lines[0][0].isdigit():
        names = lines[1]
        # Most rows, not all: a bad row is that row's problem, not a reason to miss the format.
        flags = [len(r) == len(names) + 1 and set(r[1:]) <= _FLAG_VALUES for r in lines[2:]]
        if not any(_is_int(n) for n in names) and 5 * sum(flags) >= 4 * len(flags):
            return "celeba"
    if lines and all(len(t) == 15 and all(v.isdigit() for v in t) for t in lines):
        return "ava"
    return None


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def parse_celeba(data: bytes, name: str, columns: Columns, partition: bytes | None = None) -> Parsed:
    """CelebA's ``list_attr_celeba.txt`` (or any list in its layout): a count, a line of attribute names,
    then a photo's name and one -1/1 flag per attribute; a photo's tags are the attributes it has (those
    named by ``--tags-column A,B,...``, when given). ``partition``: CelebA's ``list_eval_partition.txt``
    (``name 0|1|2``), the splits, when given."""
    _only_columns(name, columns, ("tags",), "the attributes are the tags")
    text, notes = _decode_text(name, data)
    lines = text.splitlines()
    names = lines[1].split() if len(lines) > 1 else []
    if not lines or not lines[0].strip().isdigit() or not names:
        raise FormatError(f"{name} is not an attribute list: expected a count, then the attribute names")
    kept = [n.strip() for n in columns.tags.split(",") if n.strip()] if columns.tags else names
    missing = [n for n in kept if n not in names]
    if missing:
        raise FormatError(
            f"{name}: no attribute {missing[0]!r} for --tags-column (attributes: {' '.join(names)})"
        )
    splits = _celeba_splits(partition) if partition is not None else {}
    base = posixpath.dirname(name)
    records: list[Record] = []
    problems: list[Problem] = []
    for at, line in enumerate(lines[2:], start=3):
        values = line.split()
        if not values:
            continue
        origin = f"{name}:{at}"
        if len(values) != len(names) + 1:
            problems.append(
                Problem(origin, f"line {at} has {len(values) - 1} flags, the header {len(names)}")
            )
            continue
        ref = posixpath.join(base, values[0])
        try:
            tags = _one_hot_tags(dict(zip(names, values[1:], strict=True)), kept)
        except ValueError as exc:
            problems.append(Problem(ref, str(exc), ref))
            continue
        records.append(Record(ref=ref, origin=ref, tags=tags, split=splits.get(values[0])))
    declared = int(lines[0])
    if declared != len(records) + len(problems):
        notes.append(f"{name} declares {declared} photos and lists {len(records) + len(problems)}")
    shown = ", ".join(kept[:8]) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
    notes.append(
        f"tags from {len(kept)} attributes ({shown}): a photo has those marked 1"
        + ("" if columns.tags else " (keep some with --tags-column A,B,...)")
    )
    if splits:
        notes.append(f"splits from {CELEBA_PARTITION} (CelebA's own train, validation and test)")
    return Parsed("celeba", records, problems, notes, has_tags=True)


def _celeba_splits(partition: bytes) -> dict[str, str]:
    """Photo name -> split, from ``list_eval_partition.txt``; FormatError when it is not that file."""
    splits = {}
    for line in partition.decode("utf-8", "replace").splitlines():
        values = line.split()
        if values and (len(values) != 2 or values[1] not in _CELEBA_SPLITS):
            raise FormatError(
                f"{CELEBA_PARTITION}: {line.strip()[:60]!r} is not 'name 0|1|2': fix or remove it"
            )
        if values:
            splits[values[0]] = _CELEBA_SPLITS[values[1]]
    return splits


def parse_ava(data: bytes, name: str, columns: Columns) -> Parsed:
    """AVA's ``AVA.txt``: on each line an index, the image id, the votes for the scores 1 to 10, two
    semantic tag ids and the challenge id; the photo is ``<image id>.jpg``. Its score is the mean vote,
    on AVA's 1..10 scale. The semantic tags are left out: most photos have fewer than two, so a photo
    without a tag is no example of its absence."""
    _only_columns(name, columns, (), "the score is the mean vote")
    text, notes = _decode_text(name, data)
    base = posixpath.dirname(name)
    records: list[Record] = []
    problems: list[Problem] = []
    for at, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        if len(values) != 15 or not all(v.isdigit() for v in values):
            problems.append(
                Problem(
                    f"{name}:{at}",
                    f"line {at} is not index, image id, 10 vote counts, 2 tag ids and a challenge id",
                )
            )
            continue
        ref = posixpath.join(base, f"{values[1]}.jpg")
        votes = [int(v) for v in values[2:12]]
        if not sum(votes):
            problems.append(Problem(ref, "no votes", ref))
            continue
        mean = sum(score * n for score, n in enumerate(votes, start=1)) / sum(votes)
        records.append(Record(ref=ref, origin=ref, score=mean))
    notes.append(
        "the score is each photo's mean vote on AVA's 1..10 scale; its semantic tag and challenge ids "
        "are not read"
    )
    return Parsed("ava", records, problems, notes, score_name="mean_vote", score_range=AVA_SCALE)


# --- Hugging Face parquet (images embedded) -------------------------------------------------------------

# How Hugging Face names a split's shards: train-00000-of-00003.parquet, test.parquet.
_SHARD_SPLIT = re.compile(r"^([A-Za-z]+)(?:[-_.]|$)")
_STORED_NAME = re.compile(r"[^\w.-]+")


def parquet_files(files: Sequence[str]) -> list[str]:
    return [f for f in files if f.lower().endswith(".parquet")]


@dataclass
class _ParquetColumns:
    image: str
    tags: str | None
    names: dict[str, list[str]]  # ClassLabel names by column (also of a list of ClassLabels)
    score: str | None
    notes: list[str]


def parse_parquet(
    shards: Sequence[str],
    open_shard: Callable[[str], object],
    store: Callable[[str, bytes], str],
    columns: Columns,
) -> Parsed:
    """Hugging Face's parquet (what ``datasets`` writes and the Hub serves): each row's image is embedded
    in a column of ``{"bytes", "path"}`` structs (the Image feature); the tags are a ClassLabel column
    (an index; its names in the ``huggingface`` schema metadata), a list of ClassLabels, or a tags column
    by its usual name; the score a number column under a score's usual name, or the one named. A shard's
    split is in its name (``train-00000-of-00002.parquet``) or folder. ``open_shard``: a path or file
    object pyarrow reads; ``store``: keeps one embedded image's bytes (under a name) and returns the ref
    it is read from, so that each image is checked, and quarantined, as a file is. A row with no label
    (a ClassLabel's -1, nothing in the tags and score) is left out and counted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Parsed("parquet", [])
    unlabelled = 0
    for shard in shards:
        try:
            reader = pq.ParquetFile(open_shard(shard))
            picked = _parquet_columns(shard, reader.schema_arrow, columns)
        except (pa.ArrowException, OSError) as exc:
            raise FormatError(f"{shard} is not a parquet file lightbox can read ({exc})") from None
        out.notes += [n for n in picked.notes if n not in out.notes]
        out.has_tags = out.has_tags or picked.tags is not None
        out.score_name = out.score_name or picked.score
        split = _shard_split(shard)
        wanted = [c for c in (picked.image, picked.tags, picked.score, columns.split, columns.group) if c]
        batches = reader.iter_batches(batch_size=64, columns=list(dict.fromkeys(wanted)))
        rows = (values for batch in batches for values in batch.to_pylist())
        for at, values in enumerate(rows):
            image = values.get(picked.image) or {}
            path = image.get("path") if isinstance(image.get("path"), str) else None
            origin = f"{shard} row {at}" + (f" ({path})" if path else "")
            try:
                record = _parquet_record(values, picked, columns, origin, split)
                if record is None:
                    unlabelled += 1
                    continue
                if image.get("bytes"):
                    name = _STORED_NAME.sub("_", posixpath.basename(path or "image"))[-80:]
                    record.ref = store(f"{posixpath.basename(shard)}/{at:07d}-{name}", image["bytes"])
                elif path:  # a dataset of files on disk: the path, relative to the shard
                    record.ref = posixpath.normpath(posixpath.join(posixpath.dirname(shard), path))
                else:
                    raise ValueError(f"no image in {picked.image}")
                out.records.append(record)
            except ValueError as exc:
                out.problems.append(Problem(origin, str(exc)))
    if unlabelled:
        out.notes.append(f"{unlabelled} rows have no label (a ClassLabel's -1, or nothing), left out")
    return out


def _parquet_record(
    values: Mapping[str, object], picked: _ParquetColumns, columns: Columns, origin: str, split: str | None
) -> Record | None:
    """A row's labels (its ref set by the caller); None for a row with none."""
    tags = _parquet_tags(values.get(picked.tags or ""), picked.names.get(picked.tags or ""))
    score = parse_score_cell(values.get(picked.score)) if picked.score else None
    if tags is None and score is None:
        return None
    return Record(
        ref="",
        origin=origin,
        score=score,
        tags=tags or (),
        split=(parse_split(values.get(columns.split)) if columns.split else None) or split,
        group=_text(values.get(columns.group)) if columns.group else None,
    )


def _shard_split(shard: str) -> str | None:
    found = _SHARD_SPLIT.match(posixpath.basename(shard))
    named = SPLIT_ALIASES.get(found.group(1).lower()) if found else None
    return named or split_of_path(posixpath.dirname(shard))


def _hf_features(schema: object) -> dict[str, object]:
    """The ``datasets`` features a parquet's schema metadata declares ({} when it declares none)."""
    metadata = getattr(schema, "metadata", None) or {}
    try:
        info = json.loads(metadata.get(b"huggingface", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    features = info.get("info", {}).get("features") if isinstance(info, dict) else None
    return features if isinstance(features, dict) else {}


def _class_names(feature: object) -> list[str] | None:
    """A ClassLabel's names, of the feature or of the feature a list holds; None when it is none."""
    if not isinstance(feature, Mapping):
        return None
    if feature.get("_type") in ("Sequence", "List", "LargeList"):
        return _class_names(feature.get("feature"))
    names = feature.get("names")
    if feature.get("_type") == "ClassLabel" and isinstance(names, list):
        return [str(n) for n in names]
    return None


def _parquet_columns(shard: str, schema: Any, columns: Columns) -> _ParquetColumns:
    import pyarrow as pa

    features = _hf_features(schema)
    names = {n: c for n, c in ((n, _class_names(f)) for n, f in features.items()) if c is not None}
    fields = {f.name: f.type for f in schema}

    def is_image(name: str) -> bool:
        feature, kind = features.get(name), fields[name]
        if isinstance(feature, Mapping) and feature.get("_type") == "Image":
            return True
        return pa.types.is_struct(kind) and {kind.field(i).name for i in range(kind.num_fields)} >= {
            "bytes",
            "path",
        }

    images = [n for n in fields if is_image(n)]
    if not images:
        raise FormatError(
            f"{shard} has no image column (the Image feature: bytes and path): columns "
            f"{', '.join(fields)}; for file names in a table, give a metadata.csv"
        )
    image = _first_named(images, ("image", "img")) or images[0]
    given = [c for c in (columns.tags, columns.score, columns.split, columns.group) if c and c not in fields]
    if given:
        raise FormatError(f"{shard}: no column {given[0]!r} (columns: {', '.join(fields)})")
    free = [n for n in fields if n not in images]
    labelled = [n for n in free if n in names]
    textual = [n for n in free if _is_text(fields[n])]
    numeric = [n for n in free if pa.types.is_integer(fields[n]) or pa.types.is_floating(fields[n])]
    if columns.tags is not None:
        tags: str | None = columns.tags
    elif labelled:
        tags = _first_named(labelled, TAGS_COLUMNS) or (labelled[0] if len(labelled) == 1 else None)
        if tags is None:
            raise FormatError(
                f"{shard}: several ClassLabel columns ({', '.join(labelled)}): pick one with --tags-column"
            )
    else:  # no datasets metadata: a tags column, or class indices, by their usual names
        tags = _first_named(textual, TAGS_COLUMNS) or _first_named(
            [n for n in numeric if pa.types.is_integer(fields[n])], TAGS_COLUMNS
        )
    score = columns.score or _first_named([n for n in numeric if n != tags], SCORE_COLUMNS)
    notes = []
    if len(images) > 1:
        notes.append(f"{shard}: images from the column {image!r} ({', '.join(images)} hold images)")
    if tags is not None and tags not in names and tags in numeric:
        notes.append(
            f"{shard}: {tags!r} holds class indices without their names (no Hugging Face metadata): "
            "the tags are the numbers"
        )
    unused = [n for n in free if n not in (tags, score, columns.split, columns.group)]
    if unused:
        notes.append(f"{shard}: columns not used: {', '.join(unused)}")
    return _ParquetColumns(image, tags, names, score, notes)


def _is_text(kind: Any) -> bool:
    """A string column, or a list of strings."""
    import pyarrow as pa

    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _parquet_tags(value: object, names: list[str] | None) -> tuple[str, ...] | None:
    """The tags of a cell: ClassLabel indices (by ``names``), text, or a list of them. None for no label
    (an empty cell, or the ClassLabel -1 that ``datasets`` writes for a missing label)."""
    if value is None or value == -1:
        return None
    items = value if isinstance(value, list) else [value]
    tags = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"tag {item!r} is neither a class index nor a name")
        if isinstance(item, int) and names is not None:
            if not 0 <= item < len(names):
                raise ValueError(f"class index {item} is not one of the {len(names)} classes")
            tags.append(names[item])
        elif isinstance(item, str) and not isinstance(value, list):
            return parse_tags_cell(item)
        else:
            tags.append(str(item))
    return tuple(sorted(set(_no_separator([t.strip() for t in tags if t.strip()]))))


# --- Label Studio ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roots:
    """Where Label Studio's own paths point on this machine."""

    export_dir: str  # the export file's folder (a local path or an s3:// prefix)
    local_files_root: str | None = None  # LOCAL_FILES_DOCUMENT_ROOT; default: export_dir
    media_root: str | None = None  # Label Studio's media folder (holds upload/); default: export_dir


def resolve_ls_ref(ref: str, roots: Roots) -> str:
    """A task's image reference -> a readable location (absolute local path, s3:// URL, or a path
    relative to the source). Raises ValueError for what cannot be read from here."""
    if _WINDOWS_PATH.match(ref):
        raise ValueError(
            f"{ref[:80]} is a Windows path: export with paths this machine can read (relative to the "
            "export, /data/local-files/ or s3://)"
        )
    parts = urlsplit(ref)
    if parts.scheme == "s3":
        return ref
    if parts.scheme in ("http", "https") and not parts.path.startswith("/data/"):
        raise ValueError(
            f"{ref[:80]} is a web URL: lightbox reads local files and s3:// only "
            "(export with local or S3 storage)"
        )
    path = parts.path
    if path.startswith("/data/local-files"):
        d = parse_qs(parts.query).get("d")
        if not d:
            raise ValueError(f"{ref[:80]}: a local-files URL without ?d=")
        return _join(roots.local_files_root or roots.export_dir, unquote(d[0]))
    if path.startswith("/data/upload/"):
        return _join(roots.media_root or roots.export_dir, "upload/" + unquote(path[len("/data/upload/") :]))
    if parts.scheme:
        raise ValueError(f"{ref[:80]}: unsupported image reference scheme {parts.scheme!r}")
    return unquote(ref) if posixpath.isabs(ref) else _join(roots.export_dir, unquote(ref))


def _join(root: str, rel: str) -> str:
    rel = posixpath.normpath(rel.lstrip("/"))
    if rel.startswith(".."):
        raise ValueError(f"{rel} points outside {root}")
    return root.rstrip("/") + "/" + rel if root else rel


def _image_key(data: Mapping[str, object], preferred: str | None) -> str | None:
    if preferred and preferred in data:
        return preferred
    for key in ("image", "img", "image_url", "url"):
        if isinstance(data.get(key), str):
            return key
    for key, value in data.items():
        if isinstance(value, str) and (value.startswith(("s3://", "/data/")) or is_image_name(value)):
            return key
    return None


@dataclass
class _Vote:
    scores: list[float] = field(default_factory=list)
    tag_votes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    annotations: int = 0


def _aggregate(vote: _Vote) -> tuple[float | None, tuple[str, ...]]:
    """The mean score; a tag counts when most (more than half) of the task's annotators chose it."""
    score = sum(vote.scores) / len(vote.scores) if vote.scores else None
    tags = tuple(sorted(t for t, n in vote.tag_votes.items() if n * 2 > vote.annotations))
    return score, tags


def parse_labelstudio(export: bytes, name: str, roots: Roots, columns: Columns) -> Parsed:
    try:
        tasks = json.loads(export.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{name} is not a JSON file: {exc}") from None
    if not isinstance(tasks, list):
        coco = isinstance(tasks, dict) and {"images", "annotations", "categories"} <= set(tasks)
        hint = ": it looks like COCO, whose annotations label regions, not photos" if coco else ""
        raise FormatError(f"{name}: a Label Studio export is a JSON list of tasks, not an object{hint}")
    if not tasks:
        raise FormatError(f"{name}: the export holds no tasks")
    full = any(isinstance(t, dict) and ("annotations" in t or isinstance(t.get("data"), dict)) for t in tasks)
    return (_parse_ls_json if full else _parse_ls_min)(tasks, name, roots, columns)


# Columns Label Studio's CSV export always writes (beside the task's data and one per control).
_LS_CSV_COLUMNS = {"annotator", "annotation_id", "lead_time"}


def is_labelstudio_table(name: str, data: bytes) -> bool:
    """Whether a CSV/TSV is Label Studio's CSV export (by its header)."""
    if name.lower().endswith((".jsonl", ".xlsx")):
        return False
    return set(_read_table(name, data).columns) >= _LS_CSV_COLUMNS


def parse_labelstudio_table(data: bytes, name: str, roots: Roots, columns: Columns) -> Parsed:
    """Label Studio's CSV export: the JSON_MIN rows, each control's value written as JSON when it is not
    one string (a Rating as [{"rating": 4}], several choices as {"choices": [...]})."""
    table = _read_table(name, data)
    rows = []
    for _, row in table.rows:
        if "__error__" in row:
            raise FormatError(f"{name}: {row['__error__']}")
        rows.append({k: _json_cell(v) for k, v in row.items() if v is not None and str(v).strip()})
    if not rows:
        raise FormatError(f"{name}: the export holds no rows")
    return _parse_ls_min(rows, name, roots, columns)


def _json_cell(value: str) -> object:
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _ls_tags(kind: str, value: object) -> list[str]:
    """The tags one Label Studio control's value gives: its choices as they are (a choice is one tag,
    whatever it contains), or a taxonomy's selected paths joined by '/'."""
    if kind == "taxonomy":
        paths = value if isinstance(value, list) else []
        return ["/".join(str(p) for p in path) for path in paths if isinstance(path, list) and path]
    if isinstance(value, Mapping):
        value = value.get("choices", [])
    if isinstance(value, str):
        value = [value]
    return _no_separator([str(v).strip() for v in value if str(v).strip()] if isinstance(value, list) else [])


def _pick_controls(
    name: str, controls: Mapping[str, str], columns: Columns
) -> tuple[str | None, list[str], list[str]]:
    """(score control, tag controls, notes) among a project's controls (from_name -> type)."""
    listed = ", ".join(f"{c} ({t})" for c, t in controls.items()) or "none"
    for given, kinds, what in (
        (columns.score, _LS_SCORE_TYPES, "score"),
        (columns.tags, _LS_TAG_TYPES, "tags"),
    ):
        if given is not None and given not in controls:
            raise FormatError(f"{name}: no control named {given!r} for the {what} (controls: {listed})")
        if given is not None and controls[given] not in kinds:
            raise FormatError(f"{name}: {given!r} is a {controls[given]} control, not {' or '.join(kinds)}")
    scores = [c for c, t in controls.items() if t in _LS_SCORE_TYPES]
    if columns.score is None and len(scores) > 1:
        raise FormatError(
            f"{name}: several score controls ({', '.join(scores)}): pick one with --score-column"
        )
    score = columns.score or (scores[0] if scores else None)
    tags = [columns.tags] if columns.tags else [c for c, t in controls.items() if t in _LS_TAG_TYPES]
    notes = []
    if len(tags) > 1:
        notes.append(f"tags are the union of the controls {', '.join(tags)} (pick one with --tags-column)")
    unused = [f"{c} ({t})" for c, t in controls.items() if c != score and c not in tags]
    if unused:
        notes.append(f"controls not used: {', '.join(unused)}")
    return score, tags, notes


def _submitted(task: Mapping[str, object]) -> list[dict]:
    anns = task.get("annotations") or task.get("completions") or []
    return (
        [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")]
        if isinstance(anns, list)
        else []
    )


def _parse_ls_json(tasks: list, name: str, roots: Roots, columns: Columns) -> Parsed:
    records: list[Record] = []
    problems: list[Problem] = []
    controls: dict[str, str] = {}  # from_name -> type, as first seen
    for task in tasks:
        for ann in _submitted(task) if isinstance(task, dict) else []:
            for result in ann.get("result") or []:
                if isinstance(result, dict) and result.get("from_name") and result.get("type"):
                    controls.setdefault(str(result["from_name"]), str(result["type"]).lower())
    score_control, tag_controls, notes = _pick_controls(name, controls, columns)
    unlabelled = 0
    for i, task in enumerate(tasks):
        origin = f"{name} task {task.get('id', i) if isinstance(task, dict) else i}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.append(Problem(origin, "not a task object with 'data'"))
            continue
        data = task["data"]
        key = _image_key(data, None)
        if key is None:
            problems.append(Problem(origin, "no image reference in the task's data"))
            continue
        annotations = _submitted(task)
        if not annotations:
            unlabelled += 1  # skipped, cancelled or not labelled yet: the user's choice, not a bad image
            continue
        vote = _Vote(annotations=len(annotations))
        try:
            for ann in annotations:
                for result in ann.get("result") or []:
                    value = result.get("value") if isinstance(result, dict) else None
                    if not isinstance(value, Mapping):
                        continue  # not a control's answer (a relation, a comment)
                    control, kind = result.get("from_name"), str(result.get("type", "")).lower()
                    if control in tag_controls:
                        for t in set(_ls_tags(kind, value.get(kind))):
                            vote.tag_votes[t] += 1
                    elif control == score_control and score_control is not None:
                        s = parse_score_cell(value.get(kind))
                        if s is not None:
                            vote.scores.append(s)
        except ValueError as exc:
            problems.append(Problem(origin, str(exc)))
            continue
        _add_ls_record(records, problems, origin, str(data[key]), vote, data, roots, columns)
    if unlabelled and unlabelled == len(tasks):
        raise FormatError(
            f"{name}: none of its {len(tasks)} tasks has a submitted annotation: label them, export again"
        )
    if unlabelled:
        notes.append(
            f"{unlabelled} tasks without a submitted annotation (skipped, cancelled or not labelled) left out"
        )
    return Parsed(
        "labelstudio", records, problems, notes, score_name=score_control, has_tags=bool(tag_controls)
    )


def _add_ls_record(
    records: list[Record],
    problems: list[Problem],
    origin: str,
    ref: str,
    vote: _Vote,
    data: Mapping[str, object],
    roots: Roots,
    columns: Columns,
) -> None:
    try:
        score, tags = _aggregate(vote)
        records.append(
            Record(
                ref=resolve_ls_ref(ref, roots),
                origin=f"{origin} ({ref})",
                score=score,
                tags=tags,
                split=parse_split(data.get(columns.split or "split")),
                group=_text(data.get(columns.group or "group")),
            )
        )
    except ValueError as exc:
        problems.append(Problem(origin, str(exc)))


def _min_kind(value: object) -> str:
    """What a JSON_MIN value looks like. Label Studio writes one chosen choice as a string, several as
    {"choices": [...]}, a Rating as [{"rating": 4}], a Number as [{"number": 7}], a Taxonomy as
    [{"taxonomy": [[...]]}]; the task's own data columns come through as they were imported."""
    if isinstance(value, bool) or value is None:
        return "other"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "choices" if "choices" in value else "other"
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        keys = {k for v in value for k in v}
        return next((f"ls-{k}" for k in ("rating", "number", "taxonomy") if k in keys), "other")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "list"
    return "other"


def _ls_min_columns(
    name: str, rows: list[dict], image_key: str, columns: Columns
) -> tuple[str | None, list[str], list[str]]:
    """(score column, tag columns, notes) of JSON_MIN rows: the given ones, else the Label Studio
    controls their values show (a Rating, Number, Choices or Taxonomy), else a plain column under a
    score's or a tag's usual name."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    missing = [c for c in (columns.score, columns.tags) if c is not None and c not in keys]
    if missing:
        raise FormatError(f"{name}: no column {missing[0]!r} (columns: {', '.join(keys)})")
    kinds = {k: {_min_kind(r[k]) for r in rows if k in r and r[k] is not None} - {"other"} for k in keys}
    candidates = [
        k
        for k in keys
        if k not in _LS_META and k not in {image_key, columns.split or "split", columns.group or "group"}
    ]
    notes: list[str] = []
    score = columns.score
    if score is None:
        shaped = [k for k in candidates if kinds[k] and kinds[k] <= {"ls-rating", "ls-number"}]
        plain = [k for k in candidates if kinds[k] == {"number"}]
        if len(shaped) > 1:
            raise FormatError(
                f"{name}: several score controls ({', '.join(shaped)}): pick one with --score-column"
            )
        # A bare number in JSON_MIN is the task's own data (Label Studio writes [{"rating": 4}]): taken
        # as the score only under a score's name.
        named = [k for k in plain if k.lower() in SCORE_COLUMNS]
        score = (shaped or named or [None])[0]
    if columns.tags:
        tags = [columns.tags]
    else:
        shaped = [
            k
            for k in candidates
            if k != score
            and kinds[k]
            and (kinds[k] & {"choices", "ls-taxonomy"})
            and kinds[k] <= {"choices", "text", "ls-taxonomy"}
        ]
        plain = [k for k in candidates if k != score and kinds[k] and kinds[k] <= {"text", "list"}]
        # Text is one choice, or the task's own data (a caption): taken as tags only under a tag's name.
        named = [k for k in plain if k.lower() in TAGS_COLUMNS]
        tags = shaped or named[:1]
    if len(tags) > 1:
        notes.append(f"tags are the union of the columns {', '.join(tags)} (pick one with --tags-column)")
    unused = [k for k in candidates if k != score and k not in tags]
    if unused:
        notes.append(f"columns not used: {', '.join(unused)}")
    return score, tags, notes


def _parse_ls_min(rows: list, name: str, roots: Roots, columns: Columns) -> Parsed:
    dict_rows = [r for r in rows if isinstance(r, dict)]
    problems = [
        Problem(f"{name} row {i}", "not a JSON object") for i, r in enumerate(rows) if not isinstance(r, dict)
    ]
    image_key = next((k for k in (_image_key(r, None) for r in dict_rows) if k), None)
    if image_key is None:
        raise FormatError(f"{name}: no image reference column in the JSON_MIN rows")
    score_col, tag_cols, notes = _ls_min_columns(name, dict_rows, image_key, columns)
    # One row per annotation: rows of one task (same id, else same image) are its annotators.
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in dict_rows:
        by_task[str(r.get("id", r.get(image_key)))].append(r)
    records: list[Record] = []
    for task_id, task_rows in by_task.items():
        origin = f"{name} task {task_id}"
        vote = _Vote(annotations=len(task_rows))
        try:
            for r in task_rows:
                if score_col is not None:
                    s = parse_score_cell(r.get(score_col))
                    if s is not None:
                        vote.scores.append(s)
                for col in tag_cols:
                    value = r.get(col)
                    kind = _min_kind(value)
                    if kind == "ls-taxonomy":
                        picked = _ls_tags("taxonomy", [p for v in value or [] for p in v.get("taxonomy", [])])
                    else:  # a string is one choice, whatever it contains
                        picked = _ls_tags("choices", value)
                    for t in set(picked):
                        vote.tag_votes[t] += 1
        except ValueError as exc:
            problems.append(Problem(origin, str(exc)))
            continue
        ref = task_rows[0].get(image_key)
        if isinstance(ref, str):
            _add_ls_record(records, problems, origin, ref, vote, task_rows[0], roots, columns)
        else:
            problems.append(Problem(origin, "no image reference"))
    return Parsed("labelstudio", records, problems, notes, score_name=score_col, has_tags=bool(tag_cols))


# --- after parsing: names as the disk has them ----------------------------------------------------------


def _name_key(path: str) -> str:
    return unicodedata.normalize("NFC", path.replace("\\", "/")).casefold()


def match_names(records: list[Record], files: Sequence[str]) -> tuple[list[Record], list[str]]:
    """Records whose file is not in ``files`` by its exact name, matched again when exactly one file
    matches: ignoring case, Unicode normalization (macOS writes names decomposed) and backslashes;
    then a name without its extension (Kaggle's ids); then the same name in another folder (a table
    beside its photos' folder, as KonIQ and Kaggle ship). And the notes saying how many. Names that
    match nothing stay as they are (reported missing)."""
    exact = set(files)
    index: dict[str, list[str]] = defaultdict(list)
    stems: dict[str, list[str]] = defaultdict(list)  # images by their name without the extension
    bases: dict[str, list[str]] = defaultdict(list)  # images by their file name alone, any folder
    for f in files:
        index[_name_key(f)].append(f)
        if is_image_name(f):
            stems[_name_key(posixpath.splitext(f)[0])].append(f)
            base = posixpath.basename(f)
            bases[_name_key(base)].append(f)
            bases[_name_key(posixpath.splitext(base)[0])].append(f)
    named = {r.ref for r in records}
    # A folder of photos of its own: a name missing there is missing, not a photo of the same name in
    # another folder (cameras repeat IMG_0001.JPG in every folder).
    photo_folders = {posixpath.dirname(f) for f in files if is_image_name(f)}
    out, ambiguous = [], []
    counts: Counter[str] = Counter()
    moved: Counter[str] = Counter()  # the folders names were found in
    for r in records:
        if r.ref not in exact:
            found, how = index.get(_name_key(r.ref), []), "case"
            if not found and not is_image_name(r.ref):
                found, how = stems.get(_name_key(r.ref), []), "stem"
            if not found and posixpath.dirname(r.ref) not in photo_folders:
                found = [f for f in bases.get(_name_key(posixpath.basename(r.ref)), []) if f not in named]
                how = "folder"
            if len(found) == 1:
                r = Record(**{**r.__dict__, "ref": found[0]})
                counts[how] += 1
                if how == "folder":
                    moved[posixpath.dirname(found[0]) + "/"] += 1
            elif found:
                ambiguous.append(f"{r.ref} ({', '.join(sorted(found))})")
        out.append(r)
    notes = []
    if counts["case"]:
        notes.append(f"{counts['case']} file names matched the disk's only when case or accents were ignored")
    if counts["stem"]:
        notes.append(f"{counts['stem']} names without an extension matched the one image of that name")
    if counts["folder"]:
        where = ", ".join(f"{d} ({n})" for d, n in moved.most_common(3))
        notes.append(
            f"{counts['folder']} names were found in another folder, the only image of that name: {where}"
        )
    if ambiguous:
        notes.append(
            "names that match several files (differing in case, extension or folder), left unmatched: "
            + "; ".join(ambiguous[:5])
        )
    return out, notes


def unlisted_images(
    records: Sequence[Record], problems: Sequence[Problem], files: Sequence[str], left_out: Sequence[str] = ()
) -> list[str]:
    """Images in the source that no row names: a note, so that none is left out silently (``left_out``:
    those the labels name and leave out, said in a note of their own)."""
    named = {r.ref for r in records} | {p.ref for p in problems if p.ref} | {p.origin for p in problems}
    named |= set(left_out)
    left = sorted(f for f in files if is_image_name(f) and f not in named)
    if not left:
        return []
    shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return [f"{len(left)} images in the source are in no labels file and were left out: {shown}"]


def tag_case_notes(records: Sequence[Record]) -> list[str]:
    """Tags that differ only in case or spacing are kept apart (they are the user's vocabulary), and
    said, since they are almost always one tag written two ways."""
    spellings: dict[str, set[str]] = defaultdict(set)
    for r in records:
        for t in r.tags:
            spellings[" ".join(t.split()).casefold()].add(t)
    twins = [" / ".join(sorted(v)) for v in spellings.values() if len(v) > 1]
    if not twins:
        return []
    return [f"tags that differ only in case or spacing, kept apart: {'; '.join(sorted(twins)[:10])}"]
