"""What every format parses to (``Record``, ``Problem``, ``Parsed``), the column options (``Columns``),
``FormatError``, and the cell parsing the formats share (tags, scores, flags, splits).
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from lightbox.manifest import SPLITS

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


def ref_of(base: str, name: str) -> str:
    """A file name as a labels file writes it, joined to that file's folder ``base``: a spreadsheet
    made on Windows writes sub\\photo.jpg, and no photo's name holds a backslash."""
    return posixpath.normpath(posixpath.join(base, name.replace("\\", "/")))


def outside(ref: str) -> bool:
    """Whether a ref made by ``ref_of`` points above the source's folder."""
    return ref == ".." or ref.startswith("../")


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


def split_of_path(folder: str) -> str | None:
    """The split a folder names (its deepest segment that is a split's name), as Hugging Face reads
    ``data/train/``, ``validation/`` or ``partial-test/``; None when none does."""
    for segment in reversed([s for s in folder.split("/") if s]):
        # The Hub's parquet converter writes a large dataset's first shards to partial-train/ etc.
        split = SPLIT_ALIASES.get(segment.lower().removeprefix("partial-"))
        if split is not None:
            return split
    return None


def named_in(option: str | None) -> set[str] | None:
    """The names an option lists (``--tags-column A,B``: questions, classes), or None when not given."""
    return {n.strip() for n in option.split(",") if n.strip()} if option else None


def _only_columns(name: str, columns: Columns, allowed: Sequence[str], why: str) -> None:
    """A column option this format has nothing to apply to is refused, not silently ignored."""
    given = [f"--{k}-column" for k, v in asdict(columns).items() if v is not None and k not in allowed]
    if given:
        raise FormatError(f"{name}: {', '.join(given)} does not apply here ({why})")


def only_counted(out: Parsed, name: str, count: int, what: str, instead: str) -> None:
    """``count`` labels of regions (boxes, polygons) in ``name``: never tags, so counted in a note; or,
    when no photo has a label of its own, refused saying ``instead`` (which export to make)."""
    if not count:
        return
    if not out.records:
        raise FormatError(
            f"{name} holds {count} {what} and no image classification label: each labels a region, not "
            f"the photo; {instead}"
        )
    out.notes.append(f"{count} {what} not read: each labels a region, not the photo")
