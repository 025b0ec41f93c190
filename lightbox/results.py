"""Where bulk scores go, and what a resumed job may skip: a folder of parquet parts, or PostgreSQL.

Exactly once, per (image, model name, model version): two registered models may have the same version
number (``pets`` v1 and ``places`` v1), so a version alone names no model's results.
- a parquet part is written under a temporary name and renamed when complete, so a killed job leaves
  whole parts or none (a leftover ``.tmp`` is ignored and removed by the next job);
- PostgreSQL rows are upserted on (image_id, model_name, model_version), as the upload consumer writes
  them;
- a job first reads what this model's version already has (``done``) and skips it, and never writes a
  key twice itself (``Deduper``).

An image's key is its image id (the content hash, as the importer and the upload consumer define it);
a URI with nothing to read (a missing file) has no content hash and is keyed by its URI instead.
One writer per folder at a time: two jobs writing one folder at once could both score an image.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

PART_GLOB = "part-*.parquet"
TMP_SUFFIX = ".tmp"


class BadDestination(ValueError):
    """--out names nothing this job can write to (the message says what it takes)."""


@dataclass(frozen=True)
class ScoreRow:
    uri: str
    image_id: str | None  # None: nothing was read (a missing file)
    content_hash: str | None  # sha256 of the bytes, hex; image_id is its first 16 digits
    model_name: str
    model_version: str
    score: float | None = None  # None: an error, or a tags-only model
    tag_probs: dict[str, float] | None = None  # None: an error
    error: str | None = None

    @property
    def key(self) -> str:
        return self.image_id if self.image_id is not None else f"uri:{self.uri}"


@dataclass(frozen=True)
class Done:
    """What one model's version already has: skip these URIs before reading them, and these image ids
    once read (the same photo under a new URI)."""

    uris: frozenset[str] = frozenset()
    image_ids: frozenset[str] = frozenset()


def done_from(rows: Iterable[tuple[str | None, str]]) -> Done:
    """Done from (image_id, uri) pairs of one model's version's rows (one name and one version)."""
    uris, ids = set(), set()
    for image_id, uri in rows:
        uris.add(uri)
        if image_id is not None:
            ids.add(image_id)
    return Done(frozenset(uris), frozenset(ids))


def pending(uris: Iterable[str], done: Done) -> tuple[list[str], int]:
    """The URIs still to score, each once, and how many were skipped (scored before, or repeated)."""
    todo, seen, skipped = [], set(done.uris), 0
    for uri in uris:
        if uri in seen:
            skipped += 1
            continue
        seen.add(uri)
        todo.append(uri)
    return todo, skipped


@dataclass
class Deduper:
    """Drops rows whose key this job has written already (one photo under two URIs): one row per image."""

    seen: set[str] = field(default_factory=set)

    def new(self, rows: Iterable[ScoreRow]) -> tuple[list[ScoreRow], int]:
        out, dropped = [], 0
        for row in rows:
            if row.key in self.seen:
                dropped += 1
                continue
            self.seen.add(row.key)
            out.append(row)
        return out, dropped


class ResultSink(Protocol):
    def done(self, model_name: str, model_version: str) -> Done: ...

    def write(self, rows: Sequence[ScoreRow]) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


# --- parquet parts -------------------------------------------------------------------------------------


def arrow_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            ("content_hash", pa.string()),
            ("score", pa.float32()),
            ("tag_probs", pa.map_(pa.string(), pa.float32())),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("error", pa.string()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def to_table(rows: Sequence[ScoreRow], when: datetime | None = None) -> pa.Table:
    import pyarrow as pa

    when = when or datetime.now(UTC)
    columns = {
        "image_id": [r.image_id for r in rows],
        "uri": [r.uri for r in rows],
        "content_hash": [r.content_hash for r in rows],
        "score": [r.score for r in rows],
        "tag_probs": [None if r.tag_probs is None else list(r.tag_probs.items()) for r in rows],
        "model_name": [r.model_name for r in rows],
        "model_version": [r.model_version for r in rows],
        "error": [r.error for r in rows],
        "scored_at": [when] * len(rows),
    }
    return pa.Table.from_pydict(columns, schema=arrow_schema())


class ParquetSink:
    """A folder of ``part-<job>-<n>.parquet`` files, each complete or absent."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.job = uuid.uuid4().hex[:12]
        self._n = 0
        # The highest folder this sink creates: removed again by close() if the job wrote nothing (a
        # source that cannot be listed must not leave an empty results folder behind).
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        self._created = missing[-1] if missing else None
        folder.mkdir(parents=True, exist_ok=True)
        # A killed job's half-written part: never a result. Only this sink's own names: the folder may
        # hold the user's files too (report.docx.tmp is theirs).
        for tmp in folder.glob(f"{PART_GLOB}{TMP_SUFFIX}"):
            log.info("removing %s, left by a killed job", tmp)
            tmp.unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.folder)

    def done(self, model_name: str, model_version: str) -> Done:
        """What ``model_name`` v``model_version`` has here: another model's v1 is not this one's."""
        import pyarrow.compute as pc

        table = read_parts(self.folder, columns=["image_id", "uri", "model_name", "model_version"])
        if table is None:
            return Done()
        mine = table.filter(
            pc.and_(
                pc.equal(table["model_name"], model_name), pc.equal(table["model_version"], model_version)
            )
        )
        return done_from(zip(mine["image_id"].to_pylist(), mine["uri"].to_pylist(), strict=True))

    def write(self, rows: Sequence[ScoreRow]) -> None:
        import pyarrow.parquet as pq

        if not rows:
            return
        final = self.folder / f"part-{self.job}-{self._n:06d}.parquet"
        tmp = final.with_name(final.name + TMP_SUFFIX)
        pq.write_table(to_table(rows), tmp)
        with open(tmp, "rb") as f:  # on disk before it is visible: a crash cannot leave an empty part
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self._n += 1

    def close(self) -> None:
        if self._created is None or self._n:
            return
        folder = self.folder
        while True:  # the folders this sink created, while they are empty
            try:
                folder.rmdir()
            except OSError:
                return  # not empty: someone else's files, or a part
            if folder == self._created:
                return
            folder = folder.parent


def read_parts(folder: Path, columns: list[str] | None = None) -> pa.Table | None:
    """Every complete part of a results folder as one table (None when there is none). BadDestination
    names a ``part-*.parquet`` that is not one of ours (not parquet, or other columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(folder.glob(PART_GLOB))
    if not parts:
        return None
    tables = []
    for p in parts:
        try:
            tables.append(pq.read_table(p, columns=columns, schema=arrow_schema()))
        except (pa.ArrowException, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            lfs = " (a Git LFS pointer? `git lfs pull` it)" if _lfs_pointer(p) else ""
            raise BadDestination(
                f"{p} is not a results part{lfs}: {first}; a results folder holds only the"
                f" {PART_GLOB} files bulk scoring writes: move it out of {folder}, or give --out another"
                " folder"
            ) from None
    return pa.concat_tables(tables)


def _lfs_pointer(path: Path) -> bool:
    from lightbox.source_tree import LFS_POINTER

    try:
        with path.open("rb") as f:
            return f.read(len(LFS_POINTER)) == LFS_POINTER
    except OSError:
        return False


# --- PostgreSQL ----------------------------------------------------------------------------------------


class PostgresSink:
    """The upload consumer's results table (lightbox.adapters.postgres), upserted; failed images go to
    ``<table>_errors`` beside it, so readers of the results table see scores only, as before."""

    def __init__(self, dsn: str, table: str) -> None:
        from lightbox.adapters import postgres

        self.table = table
        self.errors_table = f"{table}_errors"
        self._db = postgres.connect(dsn)
        postgres.ensure_results_table(self._db, table)
        postgres.ensure_errors_table(self._db, self.errors_table)

    def describe(self) -> str:
        return f"postgres table {self.table} (errors: {self.errors_table})"

    def done(self, model_name: str, model_version: str) -> Done:
        from lightbox.adapters import postgres

        return done_from(
            postgres.scored_keys(self._db, self.table, self.errors_table, model_name, model_version)
        )

    def write(self, rows: Sequence[ScoreRow]) -> None:
        from lightbox.adapters import postgres

        scored = [
            postgres.ResultRow(
                image_id=r.image_id,
                model_name=r.model_name,
                model_version=r.model_version,
                score=r.score,
                # Rounded as the upload consumer rounds: one table, one precision.
                tag_probs={k: round(v, 6) for k, v in r.tag_probs.items()},
                source_uri=r.uri,
            )
            for r in rows
            if r.error is None and r.image_id is not None and r.tag_probs is not None
        ]
        failed = [
            postgres.ErrorRow(r.uri, r.model_version, r.model_name, r.image_id, r.error or "")
            for r in rows
            if r.error is not None
        ]
        postgres.upsert_results(self._db, self.table, scored)
        postgres.upsert_errors(self._db, self.errors_table, failed)

    def close(self) -> None:
        self._db.close()


def open_sink(dest: str, *, dsn: str | None, table: str) -> ResultSink:
    """``postgres`` (the results table at ``dsn``) or a local folder of parquet parts."""
    if dest == "postgres":
        if not dsn:
            raise BadDestination(
                "--out postgres needs results_dsn (LIGHTBOX_RESULTS_DSN): the results database"
            )
        return PostgresSink(dsn, table)
    if "://" in dest:
        raise BadDestination(f"--out {dest!r}: expected a local folder or `postgres`")
    folder = Path(dest).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise BadDestination(f"--out {dest}: a file is there; give a folder (new, or one of earlier runs)")
    return ParquetSink(folder)


def tag_probs_json(names: Sequence[str], probs: Sequence[float]) -> str:
    """A row's tag probabilities as the actors send them: JSON keeps float32 values exact."""
    return json.dumps({n: float(p) for n, p in zip(names, probs, strict=True)})
