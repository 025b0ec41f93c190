"""Labels tables: imagefolder metadata (CSV, TSV, JSON lines, .xlsx workbooks; one-hot columns) and
classfolders (one folder of images per tag).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import posixpath
import re
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from lightbox.imaging import describe_by_extension, extension, is_image_name
from lightbox.label_formats.records import (
    _WINDOWS_PATH,
    SCORE_COLUMNS,
    SPLIT_ALIASES,
    TAGS_COLUMNS,
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    _no_separator,
    _text,
    outside,
    parse_flag,
    parse_score_cell,
    parse_split,
    parse_tags_cell,
    ref_of,
    space_separated,
    split_of_path,
)
from lightbox.label_formats.uris import bucket_ref
from lightbox.manifest import OPTIONAL_COLUMNS

# Roboflow writes ``_classes.csv`` (a file column and one 0/1 column per class) in each split's folder.
METADATA_FILES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv", "_classes.csv")
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
    "id",  # Kaggle's train.csv (id,label): late, since a table's own row id is often called id
    # A URL (found by its key's ending in the source, lightbox.label_formats.uris): a database's dump, a
    # crowd-labelling job's results (Mechanical Turk's Input.image_url). After id: a table of both names
    # its downloaded photos by id (Google Landmarks' train.csv: id,url,landmark_id).
    "image_url",
    "img_url",
    "url",
    "image_uri",
    "uri",
    "input.image_url",
)


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
    for line, row in enumerate(book[title].iter_rows(min_row=at + 1), start=at + 1):
        cells = [_formatted_text(c) for c in row]
        if any(c.strip() for c in cells):  # a sheet's blank rows
            rows.append((line, {c: v for c, v in zip(columns, cells, strict=False) if c}))
    return _Table(rows, [c for c in columns if c], notes)


_HEADER_ROWS = 10  # rows looked at for the header: a title or a merged group row may come first


def _sheet_header(rows: Iterable[Sequence[object]]) -> tuple[int, list[str]]:
    """(row number, column names) of a sheet's header: the first of its first rows that names a file
    column (a merged "Photo | Labels" row above the real header is skipped), else its first row that
    holds anything; (0, []) for an empty sheet."""
    first: tuple[int, list[str]] | None = None
    for at, values in enumerate(rows, start=1):
        if at > _HEADER_ROWS:
            break
        names = [_cell_text(v).strip() for v in values]
        if not any(names):
            continue
        if _first_named(names, FILE_COLUMNS):
            return at, names
        first = first or (at, names)
    return first or (0, [])


def _formatted_text(cell: Any) -> str:
    """A data cell as the sheet shows it where that differs from its value: a number formatted as a
    percentage (0.62 shown as 62%) is "62%", as a CSV export of the sheet holds it."""
    value = getattr(cell, "value", None)
    number_format = getattr(cell, "number_format", None) or ""
    if isinstance(value, int | float) and not isinstance(value, bool) and "%" in number_format:
        return f"{value * 100:g}%"
    return _cell_text(value)


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


# A URL in a file cell (s3://, https://, AmlDatastore://...); a file name may hold a colon (IMG:1.jpg).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def parse_imagefolder(
    files: Sequence[str],
    read: Callable[[str], bytes],
    columns: Columns,
    metas: Sequence[tuple[str, str | None]] | None = None,
    outside_ok: bool = False,
    present: Collection[str] | None = None,
) -> Parsed:
    """``metas``: the labels files to read (default: every metadata.csv/.jsonl under the source).
    ``outside_ok``: file names may lead out of the source's folder (``../photos/a.jpg`` beside a
    labels file given as SOURCE, on a local disk). ``present``: the files a URL's key is looked for in
    (default: ``files``)."""
    present = set(files if present is None else present)
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
            if _URL.match(name):  # its key's ending in the source, else read from S3 or matched by name
                try:
                    ref = bucket_ref(name, base, present)
                except ValueError as exc:
                    problems.append(Problem(name, str(exc)))
                    continue
                origin = name.split("?", 1)[0]  # a signed URL's signature is no name
            else:
                ref = origin = ref_of(base, name)
            if outside(ref) and not outside_ok:
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
        spread: list[tuple[float, str]] = []
        for ref in rated:
            first = seen_files[ref]
            scores = ([first.score] if first.score is not None else []) + rated[ref]
            first.score = sum(scores) / len(scores)
            if max(scores) > min(scores):
                listed = ", ".join(f"{x:g}" for x in scores)
                spread.append((max(scores) - min(scores), f"{ref} ({listed} -> {first.score:g})"))
        notes.append(
            f"{len(merged)} images are listed on several rows (one per rater, or per tag): each has "
            "the tags of all its rows and the mean of their scores" + _widest(spread)
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


def _widest(spread: list[tuple[float, str]], shown: int = 3) -> str:
    """The rows whose scores disagree most, so that a 3 and a 9 merged into a 6 can be checked."""
    if not spread:
        return ""
    worst = [text for _, text in sorted(spread, key=lambda x: -x[0])[:shown]]
    more = ", ..." if len(spread) > shown else ""
    return f"; {len(spread)} with scores that differ, most: {'; '.join(worst)}{more}"


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
