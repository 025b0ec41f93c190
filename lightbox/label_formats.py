"""Labelled-image export formats -> one list of records. Pure parsing: no image is read here.

Three formats, detected from the source's files (``detect``) or forced:

- ``imagefolder`` (Hugging Face): ``metadata.jsonl`` / ``metadata.csv`` with a ``file_name`` column
  (relative to the metadata file), a score column, a tags column, optional split and group columns;
  or split subfolders (``train/``, ``validation/`` or ``val/``, ``test/``) each with its own metadata.
- ``labelstudio``: a Label Studio export of an image project, ``JSON`` (tasks with
  ``annotations[].result[]``) or ``JSON_MIN`` (one flat row per annotation); ``Choices`` for tags,
  ``Rating`` or ``Number`` for the score. Several annotations of a task: the mean score, and a tag
  counts when most annotators chose it.
- ``classfolders`` (torchvision ImageFolder): ``root/<tag>/<image>``; no score.

A row that cannot be read becomes a ``Problem`` (origin, reason) for the report; the others go on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from lightbox.imaging import IMAGE_EXTENSIONS, is_image_name
from lightbox.manifest import OPTIONAL_COLUMNS, SPLITS

FORMATS: tuple[str, ...] = ("imagefolder", "labelstudio", "classfolders")
METADATA_FILES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv")
SPLIT_ALIASES: Mapping[str, str] = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
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


@dataclass
class Parsed:
    format: str
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # dataset-level remarks (unknown columns, ...)
    score_name: str | None = None  # the score column or control; None: no scores in this source
    has_tags: bool = False


@dataclass(frozen=True)
class Columns:
    """Which source columns (or Label Studio control names) hold what."""

    score: str | None = None
    tags: str | None = None
    split: str | None = None
    group: str | None = None


# --- shared cell parsing --------------------------------------------------------------------------------


def parse_tags_cell(value: object) -> tuple[str, ...]:
    """A JSON list, a Label Studio ``{"choices": [...]}``, or text separated by ``|``, ``;`` or ``,``."""
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
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"tags {text[:60]!r} look like a JSON list but do not parse") from None
            return parse_tags_cell(loaded)
        sep = next((s for s in ("|", ";", ",") if s in text), None)
        items = text.split(sep) if sep else [text]
    tags = tuple(sorted({t.strip() for t in items if t.strip()}))
    bad = [t for t in tags if "|" in t]
    if bad:
        raise ValueError(f"tag {bad[0]!r} contains '|', which lightbox reserves as its separator")
    return tags


def parse_score_cell(value: object) -> float | None:
    """None for an empty cell; ValueError for text that is not a finite number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"score {value!r} is not a number")
    if isinstance(value, Mapping) and len(value) == 1:  # {"rating": 4} as some exports write it
        value = next(iter(value.values()))
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


def detect(files: Sequence[str], source_is_file: bool = False) -> str:
    """The format of a source from its file list (paths relative to the source, '/'-separated)."""
    if source_is_file:
        name = posixpath.basename(files[0]) if files else ""
        if name in METADATA_FILES:
            return "imagefolder"
        if name.endswith(".json"):
            return "labelstudio"
        raise FormatError(f"{name!r} is neither a metadata.csv/metadata.jsonl nor a Label Studio JSON export")
    names = set(files)
    if any(m in names for m in METADATA_FILES) or any(
        f"{d}/{m}" in names for d in SPLIT_ALIASES for m in METADATA_FILES
    ):
        return "imagefolder"
    if any("/" not in f and f.endswith(".json") for f in files):
        return "labelstudio"
    if any(f.count("/") >= 1 and is_image_name(f) for f in files):
        return "classfolders"
    raise FormatError(
        "cannot tell the format: expected a metadata.csv or metadata.jsonl (imagefolder), a Label "
        "Studio .json export, or one folder of images per tag (classfolders); use --format to force one"
    )


# --- imagefolder ----------------------------------------------------------------------------------------


def metadata_files(files: Sequence[str]) -> list[tuple[str, str | None]]:
    """(metadata path, split implied by its folder or None) for the root and the split subfolders."""
    names = set(files)
    root = [m for m in METADATA_FILES if m in names][:1]
    found: list[tuple[str, str | None]] = [(m, None) for m in root]
    for folder, split in SPLIT_ALIASES.items():
        for m in METADATA_FILES:
            if f"{folder}/{m}" in names:
                found.append((f"{folder}/{m}", split))
                break
    return found


def _read_rows(name: str, data: bytes) -> Iterable[tuple[int, dict]]:
    """(line number, row) per row of a metadata file; a line that does not parse raises ValueError."""
    text = data.decode("utf-8-sig")
    if name.endswith(".jsonl"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield i, {"__error__": f"line {i} is not JSON: {exc.msg}"}
                continue
            yield i, row if isinstance(row, dict) else {"__error__": f"line {i} is not a JSON object"}
    else:
        for i, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            yield i, row


def parse_imagefolder(files: Sequence[str], read: Callable[[str], bytes], columns: Columns) -> Parsed:
    metas = metadata_files(files)
    if not metas:
        raise FormatError("no metadata.csv or metadata.jsonl at the source's root or in train/, val/, test/")
    score_col = columns.score or "score"
    tags_col = columns.tags or "tags"
    split_col = columns.split or "split"
    group_col = columns.group or "group"
    known = {"file_name", score_col, tags_col, split_col, group_col, *OPTIONAL_COLUMNS}
    records: list[Record] = []
    problems: list[Problem] = []
    seen_columns: set[str] = set()
    seen_files: set[str] = set()
    for meta, folder_split in metas:
        base = posixpath.dirname(meta)
        for line, row in _read_rows(meta, read(meta)):
            origin = f"{meta}:{line}"
            if "__error__" in row:
                problems.append(Problem(origin, row["__error__"]))
                continue
            seen_columns |= set(row)
            name = _text(row.get("file_name"))
            if name is None:
                problems.append(Problem(origin, "no file_name"))
                continue
            ref = posixpath.normpath(posixpath.join(base, name))
            origin = ref
            if ref.startswith("../") or ref == ".." or posixpath.isabs(ref):
                problems.append(Problem(origin, "file_name points outside the source folder"))
                continue
            if ref in seen_files:
                problems.append(Problem(origin, "duplicate file name: listed twice in the metadata"))
                continue
            seen_files.add(ref)
            try:
                records.append(
                    Record(
                        ref=ref,
                        origin=origin,
                        score=parse_score_cell(row.get(score_col)),
                        tags=parse_tags_cell(row.get(tags_col)),
                        split=parse_split(row.get(split_col)) or folder_split,
                        group=_text(row.get(group_col)),
                        extra={c: str(row[c]) for c in OPTIONAL_COLUMNS if _text(row.get(c))},
                    )
                )
            except ValueError as exc:
                problems.append(Problem(origin, str(exc)))
    if columns.score and columns.score not in seen_columns:
        raise FormatError(
            f"no score column {columns.score!r} in the metadata (columns: {sorted(seen_columns)})"
        )
    if columns.tags and columns.tags not in seen_columns:
        raise FormatError(
            f"no tags column {columns.tags!r} in the metadata (columns: {sorted(seen_columns)})"
        )
    notes = []
    unknown = sorted(seen_columns - known)
    if unknown:
        notes.append(f"columns not used (unknown): {', '.join(unknown)}")
    return Parsed(
        format="imagefolder",
        records=records,
        problems=problems,
        notes=notes,
        score_name=score_col if score_col in seen_columns else None,
        has_tags=tags_col in seen_columns,
    )


# --- classfolders ---------------------------------------------------------------------------------------


def parse_classfolders(files: Sequence[str]) -> Parsed:
    """``<tag>/<...>/<image>``: the first folder is the tag. The same photo in several folders becomes
    one image with several tags when the importer merges records by content."""
    records, problems = [], []
    for f in sorted(files):
        if "/" not in f:
            if is_image_name(f):
                problems.append(Problem(f, "image at the top level: classfolders expects <tag>/<image>"))
            continue
        tag = f.split("/", 1)[0]
        if posixpath.basename(f).startswith("."):
            continue
        if not is_image_name(f):
            problems.append(Problem(f, "not an image file name (" + ", ".join(IMAGE_EXTENSIONS) + ")"))
            continue
        records.append(Record(ref=f, origin=f, tags=(tag,)))
    if not records:
        raise FormatError("no <tag>/<image> files found for classfolders")
    return Parsed(format="classfolders", records=records, problems=problems, has_tags=True)


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
        raise FormatError(f"{name}: a Label Studio export is a JSON list of tasks")
    if not tasks:
        raise FormatError(f"{name}: the export holds no tasks")
    full = any(isinstance(t, dict) and ("annotations" in t or isinstance(t.get("data"), dict)) for t in tasks)
    return (_parse_ls_json if full else _parse_ls_min)(tasks, name, roots, columns)


def _parse_ls_json(tasks: list, name: str, roots: Roots, columns: Columns) -> Parsed:
    records: list[Record] = []
    problems: list[Problem] = []
    score_name: str | None = None
    has_tags = False
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
        vote = _Vote()
        for ann in task.get("annotations") or task.get("completions") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            vote.annotations += 1
            for result in ann.get("result") or []:
                kind, control = result.get("type"), result.get("from_name")
                value = result.get("value") or {}
                if kind == "choices" and (columns.tags is None or control == columns.tags):
                    has_tags = True
                    for t in parse_tags_cell(value.get("choices")):
                        vote.tag_votes[t] += 1
                elif kind in _LS_SCORE_TYPES and (columns.score is None or control == columns.score):
                    score_name = score_name or control or kind
                    try:
                        s = parse_score_cell(value.get(kind))
                    except ValueError as exc:
                        problems.append(Problem(origin, str(exc)))
                        continue
                    if s is not None:
                        vote.scores.append(s)
        if vote.annotations == 0:
            problems.append(Problem(origin, "no (uncancelled) annotation"))
            continue
        _add_ls_record(records, problems, origin, str(data[key]), vote, data, roots, columns)
    return Parsed("labelstudio", records, problems, score_name=score_name, has_tags=has_tags)


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


def _ls_min_columns(rows: list[dict], image_key: str, columns: Columns) -> tuple[str | None, str | None]:
    """(score column, tags column) of JSON_MIN rows: given, else the one numeric and the one
    choices-valued key that are not Label Studio's own."""
    if columns.score or columns.tags:
        return columns.score, columns.tags
    keys = (
        {k for r in rows for k in r}
        - _LS_META
        - {image_key, columns.split or "split", columns.group or "group"}
    )
    numeric = [
        k
        for k in sorted(keys)
        if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows if k in r)
    ]
    choice = [
        k
        for k in sorted(keys)
        if k not in numeric
        and all(
            isinstance(r.get(k), (str, list)) or (isinstance(r.get(k), dict) and "choices" in r[k])
            for r in rows
            if k in r
        )
    ]
    score = next((k for k in numeric if k in ("score", "rating")), numeric[0] if len(numeric) == 1 else None)
    tags = next(
        (k for k in choice if k in ("tags", "choice", "choices")), choice[0] if len(choice) == 1 else None
    )
    return score, tags


def _parse_ls_min(rows: list, name: str, roots: Roots, columns: Columns) -> Parsed:
    dict_rows = [r for r in rows if isinstance(r, dict)]
    problems = [
        Problem(f"{name} row {i}", "not a JSON object") for i, r in enumerate(rows) if not isinstance(r, dict)
    ]
    image_key = next((k for k in (_image_key(r, None) for r in dict_rows) if k), None)
    if image_key is None:
        raise FormatError(f"{name}: no image reference column in the JSON_MIN rows")
    score_col, tags_col = _ls_min_columns(dict_rows, image_key, columns)
    # One row per annotation: rows of one task (same id, else same image) are its annotators.
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in dict_rows:
        by_task[str(r.get("id", r.get(image_key)))].append(r)
    records: list[Record] = []
    for task_id, task_rows in by_task.items():
        origin = f"{name} task {task_id}"
        vote = _Vote(annotations=len(task_rows))
        ok = True
        for r in task_rows:
            try:
                if score_col is not None:
                    s = parse_score_cell(r.get(score_col))
                    if s is not None:
                        vote.scores.append(s)
                if tags_col is not None:
                    for t in parse_tags_cell(r.get(tags_col)):
                        vote.tag_votes[t] += 1
            except ValueError as exc:
                problems.append(Problem(origin, str(exc)))
                ok = False
        ref = task_rows[0].get(image_key)
        if ok and isinstance(ref, str):
            _add_ls_record(records, problems, origin, ref, vote, task_rows[0], roots, columns)
        elif ok:
            problems.append(Problem(origin, "no image reference"))
    return Parsed("labelstudio", records, problems, score_name=score_col, has_tags=tags_col is not None)
