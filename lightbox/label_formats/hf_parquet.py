"""Hugging Face's parquet shards: images embedded as bytes, ClassLabel names in the schema."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightbox.imaging import error_line
from lightbox.label_formats.records import (
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
    parse_score_cell,
    parse_split,
    parse_tags_cell,
    split_of_path,
)
from lightbox.label_formats.tables import _first_named

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
            raise FormatError(
                f"{shard} is not a parquet file lightbox can read ({error_line(exc)})"
            ) from None
        out.notes += [n for n in picked.notes if n not in out.notes]
        out.has_tags = out.has_tags or picked.tags is not None
        out.score_name = out.score_name or picked.score
        split = _shard_split(shard)
        wanted = [c for c in (picked.image, picked.tags, picked.score, columns.split, columns.group) if c]
        batches = reader.iter_batches(batch_size=_batch_rows(reader), columns=list(dict.fromkeys(wanted)))
        # Stored under the shard's whole path: the Hub's converter names every split's shard 0000.parquet.
        folder = _STORED_NAME.sub("_", shard)
        try:
            unlabelled += _read_rows(shard, batches, picked, columns, split, folder, store, out)
        except (pa.ArrowException, OSError) as exc:  # a damaged page past the footer
            raise FormatError(
                f"{shard} is damaged: {error_line(exc)}; export it again (or leave it out)"
            ) from None
    if unlabelled:
        out.notes.append(f"{unlabelled} rows have no label (a ClassLabel's -1, or nothing), left out")
    return out


# Rows held at once: 64, fewer when rows are large (camera photos embedded): about this many bytes.
_BATCH_BYTES = 32_000_000


def _batch_rows(reader: Any) -> int:
    meta = reader.metadata
    rows = sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return max(1, min(64, _BATCH_BYTES * rows // size)) if rows and size else 64


def _read_rows(
    shard: str,
    batches: Any,
    picked: _ParquetColumns,
    columns: Columns,
    split: str | None,
    folder: str,
    store: Callable[[str, bytes], str],
    out: Parsed,
) -> int:
    """One shard's rows into ``out``; returns how many had no label."""
    unlabelled = 0
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
                record.ref = store(f"{folder}/{at:07d}-{name}", image["bytes"])
            elif path:  # a dataset of files on disk: the path, relative to the shard
                record.ref = posixpath.normpath(posixpath.join(posixpath.dirname(shard), path))
            else:
                raise ValueError(f"no image in {picked.image}")
            out.records.append(record)
        except ValueError as exc:
            out.problems.append(Problem(origin, str(exc)))
    return unlabelled


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
