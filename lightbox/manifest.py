"""The data contract: the manifest and the label spec of a dataset folder. Torch-free, pandas-free.

Every stage reads a dataset through this module; nothing else knows the file names, the columns,
the split names or how a tag list is written in a cell::

    <data_dir>/images/<image_id>.<ext>   content-addressed copies of the user's photos
    <data_dir>/manifest.csv              COLUMNS (+ OPTIONAL_COLUMNS), one row per image, by image_id
    <data_dir>/labels.json               the LabelSpec: the tags and the score scale the data declares

A missing score is an empty cell; an image with no tags has an empty ``tags`` cell.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

MANIFEST_NAME = "manifest.csv"
LABELS_NAME = "labels.json"
IMAGES_SUBDIR = "images"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
GOLDEN_SPLIT = "golden"
TAG_SEPARATOR = "|"
COLUMNS: tuple[str, ...] = (
    "image_id",  # sha256 of the file's bytes, 16 hex digits: the same photo is the same image
    "path",  # images/<image_id>.<ext>, relative to the data folder
    "split",  # one of SPLITS (GOLDEN_SPLIT in the golden folder)
    "group",  # images of one group never straddle splits (the user's group, else a near-duplicate cluster)
    "score",  # on the dataset's own scale (LabelSpec.score_range); empty when not labelled
    "tags",  # TAG_SEPARATOR-joined, sorted
    "width",  # after EXIF orientation
    "height",
    "phash",  # 64-bit perceptual hash, 16 hex digits
    "original",  # where the image came from, relative to the import source (reports, diffs)
)
# Known extra columns kept when present: the synthetic set's ground-truth distortions ("blur:3+jpeg:2"
# or "none"), read by the per-distortion plots and the behavioural checks.
OPTIONAL_COLUMNS: tuple[str, ...] = ("distortions",)
SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """A data folder that is not a lightbox dataset (the message says what to do)."""


# --- tags in a cell -----------------------------------------------------------------------------------


def tags_to_cell(tags: Iterable[str]) -> str:
    return TAG_SEPARATOR.join(sorted(set(tags)))


def cell_to_tags(cell: str | None) -> list[str]:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    return [t for t in str(cell).split(TAG_SEPARATOR) if t]


def tags_matrix(cells: Iterable[str | None], vocabulary: Sequence[str]) -> np.ndarray:
    """[N, K] float32 0/1. Tags outside ``vocabulary`` are ignored: the vocabulary is what a model was
    trained on, and a tag left out of training (too few examples) is no error for that model."""
    index = {t: i for i, t in enumerate(vocabulary)}
    cells = list(cells)
    out = np.zeros((len(cells), len(vocabulary)), np.float32)
    for row, cell in enumerate(cells):
        for t in cell_to_tags(cell):
            j = index.get(t)
            if j is not None:
                out[row, j] = 1.0
    return out


def parse_score(cell: str | None) -> float:
    """NaN for an empty cell (not labelled)."""
    if cell is None or cell == "":
        return math.nan
    return float(cell)


def format_score(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    # Fixed formatting: a float repr must not vary the manifest's bytes (its DVC md5).
    return f"{float(value):.6g}"


# --- the label spec -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpec:
    """What the dataset declares about its labels. Written at import, read by every later stage."""

    tag_counts: Mapping[str, int] = field(default_factory=dict)  # every tag seen -> images with it
    min_tag_count: int = 5
    score_name: str | None = None  # None: the dataset has no score labels
    score_range: tuple[float, float] | None = None  # (low, high) on the dataset's own scale
    score_range_source: str = "observed"  # "given" (--score-range, or the format's scale) or "observed"
    split_policy: str = "group"  # "given" (the source's splits) or "group" (assigned by group, seeded)
    source_format: str = ""  # the import format (imagefolder, labelstudio, cvat, ...) or synthetic
    source: str = ""
    # Sources added with --append after ``source``: a re-import of ``source`` alone would drop theirs.
    appended: tuple[str, ...] = ()
    seed: int = 0
    schema: int = SCHEMA_VERSION

    @property
    def tags(self) -> tuple[str, ...]:
        """The training vocabulary: tags with at least ``min_tag_count`` images, sorted."""
        return tuple(sorted(t for t, n in self.tag_counts.items() if n >= self.min_tag_count))

    @property
    def excluded_tags(self) -> tuple[str, ...]:
        """Tags seen too rarely to learn or judge: listed, left out of training."""
        return tuple(sorted(t for t, n in self.tag_counts.items() if n < self.min_tag_count))

    @property
    def has_score(self) -> bool:
        return self.score_range is not None

    @property
    def has_tags(self) -> bool:
        return bool(self.tags)

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """Dataset scale -> [0, 1] (what the model's score head learns)."""
        low, high = self._range()
        return (np.asarray(scores, np.float32) - low) / (high - low)

    def denormalise(self, unit: np.ndarray) -> np.ndarray:
        low, high = self._range()
        return low + np.asarray(unit, np.float32) * (high - low)

    def _range(self) -> tuple[float, float]:
        if self.score_range is None:
            raise ValueError("this dataset has no score labels")
        return self.score_range

    def same_labels(self, other: LabelSpec) -> bool:
        """Whether models of the two specs answer the same question (same tags, same scale)."""
        return self.tags == other.tags and self.score_range == other.score_range

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tag_counts"] = dict(sorted(self.tag_counts.items()))
        d["score_range"] = list(self.score_range) if self.score_range else None
        d["tags"] = list(self.tags)
        d["excluded_tags"] = list(self.excluded_tags)
        d["appended"] = list(self.appended)
        if not self.appended:  # a dataset never appended to keeps its labels.json bytes (no new version)
            del d["appended"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LabelSpec:
        rng = d.get("score_range")
        return cls(
            tag_counts={str(k): int(v) for k, v in (d.get("tag_counts") or {}).items()},
            min_tag_count=int(d.get("min_tag_count", 5)),
            score_name=d.get("score_name"),
            score_range=(float(rng[0]), float(rng[1])) if rng else None,
            score_range_source=str(d.get("score_range_source", "observed")),
            split_policy=str(d.get("split_policy", "group")),
            source_format=str(d.get("source_format", "")),
            source=str(d.get("source", "")),
            appended=tuple(str(s) for s in d.get("appended") or ()),
            seed=int(d.get("seed", 0)),
            schema=int(d.get("schema", SCHEMA_VERSION)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabelSpec:
        return cls.from_dict(json.loads(text))


def parse_score_range(text: str | None) -> tuple[float, float] | None:
    """``"1,10"`` -> (1.0, 10.0); None passes through. Raises ValueError with what was wrong."""
    if text is None or str(text).strip() == "":
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"score range must be 'LOW,HIGH' (e.g. 1,10), got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ValueError(f"score range needs finite LOW < HIGH, got {text!r}")
    return low, high


# --- files --------------------------------------------------------------------------------------------


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> None:
    """Write a CSV atomically (temp file + rename in the same folder) with a fixed dialect."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as strings): the raw view, so a rewrite keeps untouched rows byte-identical."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def manifest_columns(rows: Sequence[Mapping[str, str]]) -> tuple[str, ...]:
    """COLUMNS plus the optional columns any row fills."""
    extra = tuple(c for c in OPTIONAL_COLUMNS if any(r.get(c) for r in rows))
    return COLUMNS + extra


def write_manifest(folder: Path, rows: Sequence[Mapping[str, str]]) -> Path:
    path = folder / MANIFEST_NAME
    write_csv(path, manifest_columns(rows), sorted(rows, key=lambda r: r["image_id"]))
    return path


def check_header(header: Sequence[str], path: Path) -> None:
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ManifestError(
            f"{path} is not a lightbox manifest (missing columns {', '.join(missing)}): bring data in "
            "with `lightbox data import SOURCE` (your own files are read, never changed)"
        )


def read_manifest(folder: Path) -> list[dict[str, str]]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no dataset at {folder}: run `lightbox data import SOURCE` first")
    header, rows = read_csv(path)
    check_header(header, path)
    return rows


def write_label_spec(folder: Path, spec: LabelSpec) -> Path:
    path = folder / LABELS_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(spec.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_label_spec(folder: Path) -> LabelSpec:
    path = folder / LABELS_NAME
    if not path.is_file():
        raise ManifestError(f"no label spec at {path}: run `lightbox data import SOURCE` first")
    try:
        return LabelSpec.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path} is not a valid label spec ({exc}): re-import the data") from None


def count_tags(rows: Iterable[Mapping[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        for t in set(cell_to_tags(row.get("tags"))):
            counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items()))


# --- versions -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestDiff:
    added: list[str]
    removed: list[str]
    relabelled: list[tuple[str, str, str]]  # (image_id, before, after) as "score=..; tags=.."
    moved: list[tuple[str, str, str]]  # (image_id, split before, split after)


def diff(before: Sequence[Mapping[str, str]], after: Sequence[Mapping[str, str]]) -> ManifestDiff:
    """What changed between two versions of a manifest, by image id (a content hash)."""
    a = {r["image_id"]: r for r in before}
    b = {r["image_id"]: r for r in after}

    def labels(r: Mapping[str, str]) -> str:
        return f"score={r.get('score', '')}; tags={r.get('tags', '')}"

    common = sorted(a.keys() & b.keys())
    return ManifestDiff(
        added=sorted(b.keys() - a.keys()),
        removed=sorted(a.keys() - b.keys()),
        relabelled=[(i, labels(a[i]), labels(b[i])) for i in common if labels(a[i]) != labels(b[i])],
        moved=[(i, a[i]["split"], b[i]["split"]) for i in common if a[i]["split"] != b[i]["split"]],
    )


def spec_changes(before: LabelSpec, after: LabelSpec) -> list[str]:
    """What a new version changed in what the labels mean (the score's scale and name, the training
    vocabulary): relabelled rows alone do not tell that an old 5 of 5 now reads 5 of 10."""
    changes = []
    if before.score_name != after.score_name:
        changes.append(f"score: {before.score_name or 'none'} -> {after.score_name or 'none'}")
    if before.score_range != after.score_range:
        changes.append(f"score scale: {_scale(before.score_range)} -> {_scale(after.score_range)}")
    added = sorted(set(after.tags) - set(before.tags))
    removed = sorted(set(before.tags) - set(after.tags))
    if added:
        changes.append(f"tags added: {', '.join(added)}")
    if removed:
        changes.append(f"tags removed: {', '.join(removed)}")
    return changes


def _scale(score_range: tuple[float, float] | None) -> str:
    return f"{score_range[0]:g}..{score_range[1]:g}" if score_range else "none"


def rows_from_bytes(data: bytes) -> list[dict[str, str]]:
    """Manifest rows from a file's bytes (a version read back through DVC)."""
    text = data.decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))
