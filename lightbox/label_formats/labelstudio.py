"""Label Studio exports of an image project: JSON, JSON_MIN and its CSV."""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from lightbox.imaging import is_image_name
from lightbox.label_formats.records import (
    _WINDOWS_PATH,
    SCORE_COLUMNS,
    TAGS_COLUMNS,
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    _no_separator,
    _text,
    parse_score_cell,
    parse_split,
)
from lightbox.label_formats.tables import _read_table

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
        # Label Studio on Windows writes the folders with backslashes (?d=shoot%5Cday1%5Cp0.jpg).
        return _join(roots.local_files_root or roots.export_dir, unquote(d[0]).replace("\\", "/"))
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
    parsed = _parse_ls_min(rows, name, roots, columns)
    parsed.notes = table.notes + parsed.notes  # how the file was read (its encoding, bare JSON cells)
    return parsed


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
        # Label Studio 0.x marked a skipped task's completion "skipped"; later ones "was_cancelled".
        [a for a in anns if isinstance(a, dict) and not (a.get("was_cancelled") or a.get("skipped"))]
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
    # A task nobody annotated is still a row (its data, annotation_id null; empty in the CSV): no label
    # of it is an answer, so it is left out, not taken for a photo without any tag.
    with_ids = any("annotation_id" in r for r in dict_rows)
    labelled = [r for r in dict_rows if not (with_ids and r.get("annotation_id") in (None, ""))]
    unlabelled = {str(r.get("id", r.get(image_key))) for r in dict_rows} - {
        str(r.get("id", r.get(image_key))) for r in labelled
    }
    if not labelled:
        raise FormatError(
            f"{name}: none of its {len(unlabelled)} tasks has a submitted annotation: label them, "
            "export again"
        )
    score_col, tag_cols, notes = _ls_min_columns(name, labelled, image_key, columns)
    if unlabelled:
        notes.append(f"{len(unlabelled)} tasks without a submitted annotation (not labelled yet) left out")
    # One row per annotation: rows of one task (same id, else same image) are its annotators.
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in labelled:
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
