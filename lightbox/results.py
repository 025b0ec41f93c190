"""Where bulk scores go, and what a resumed job may skip: a folder of parquet parts, or PostgreSQL.

Exactly once, per (image, model name, model version): two registered models may have the same version
number (``pets`` v1 and ``places`` v1), so a version alone names no model's results.
- a parquet part is written under a temporary name and renamed when complete, so a killed job leaves
  whole parts or none (a leftover ``.tmp`` is ignored and removed by the next job);
- PostgreSQL rows are upserted on (image_id, model_name, model_version), as the upload consumer writes
  them;
- a job first reads what this model's version already has (``done``) and skips the images scored OK,
  and never writes a key twice itself (``Deduper``).

A failed image (its row is an error) is not done: a rerun retries it (the user restored the file, or
storage gave up on it), and the retry's row supersedes the error row (``finish``): PostgreSQL deletes
the error row in the transaction that writes the score; a results folder rewrites the older parts that
hold superseded error rows, each atomically, after the part with the retry's rows is on disk. A job
killed between the two leaves an error row beside an OK row of the same URI: the next job's ``done``
drops it (the OK row wins), and never drops an OK row.

An image's key is its image id (the content hash, as the importer and the upload consumer define it);
a URI with nothing to read (a missing file) has no content hash and is keyed by its URI instead: the
retry's row, keyed by its content hash, supersedes the error row by URI.

A photo edited in place (same path or key, new bytes) is told by its source version, recorded with each
row (``source_version``: the file's size and mtime, or the object's size and ETag, from the listing:
lightbox.catalog.list_with_versions): a URI scored OK is done only while its stored version equals the
listing's (``changed_since``). A changed URI is scored again, and its new row supersedes its old one as
a retry's row supersedes an error row: in PostgreSQL in the new row's transaction, in a folder by the
same atomic rewrite of the older parts, after the new part is on disk (a job killed in between leaves
two OK rows of the URI: the next job's ``done`` keeps the newer, ``repeated_ok``). The version is the
listing's, taken before the read: a file edited between the two is scored again by the next rerun,
never left with a stale score. Rows written before versions were recorded have none, and neither have
the URIs of a list (.txt, parquet ``uri``) nor a file that cannot be stat'ed: such rows are current,
and a URI scored OK is skipped by URI as before (an upgrade does not rescore a whole catalog). A copy
that keeps size and mtime (or an object re-uploaded whole with the same bytes) is not a change.
One writer per folder at a time: a second job is refused at once (``WRITER_LOCK``, lightbox.locks).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from lightbox import locks

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

PART_GLOB = "part-*.parquet"
TMP_SUFFIX = ".tmp"
# The results folder's writer lock: hidden, so pyarrow and pandas reading the folder skip it.
WRITER_LOCK = ".lightbox-writer.lock"


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
    source_version: str | None = None  # as listed (lightbox.catalog.Listed); None: unknown

    @property
    def key(self) -> str:
        return self.image_id if self.image_id is not None else f"uri:{self.uri}"


class Stamp(NamedTuple):
    """The source version a URI's OK row was scored from, and that row's image id."""

    version: str
    image_id: str | None


@dataclass(frozen=True)
class Done:
    """What one model's version already has: skip these URIs before reading them, and these image ids
    once read (the same photo under a new URI). Both are of rows scored OK; ``failed``: the URIs whose
    only rows are errors, which a rerun retries; ``stamps``: the source version of each OK row that has
    one (rows written before versions were recorded have none: current, whatever the listing says)."""

    uris: frozenset[str] = frozenset()
    image_ids: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    stamps: Mapping[str, Stamp] = field(default_factory=dict)


# (image_id, uri, failed, source_version) of one stored row.
StoredRow = tuple[str | None, str, bool, str | None]


def done_from(rows: Iterable[StoredRow]) -> Done:
    """Done from (image_id, uri, failed, source_version) of one model's version's rows (one name and one
    version). A URI with an OK row is done even beside an error row of its own (a job killed before it
    dropped that)."""
    uris, ids, failed = set(), set(), set()
    stamps: dict[str, Stamp] = {}
    for image_id, uri, is_error, version in rows:
        if is_error:
            failed.add(uri)
            continue
        uris.add(uri)
        if image_id is not None:
            ids.add(image_id)
        if version is not None:
            stamps[uri] = Stamp(version, image_id)
    # Why not the error rows' image ids among the done ones: a truncated file's content is what failed,
    # and a rerun must read it again (under its URI or another) to retry it.
    return Done(frozenset(uris), frozenset(ids), frozenset(failed - uris), stamps)


def changed_since(done: Done, listed: Mapping[str, str]) -> frozenset[str]:
    """The URIs scored OK whose source changed since: ``listed`` (URI -> source version, where the
    listing knows it) names another version than their row's. A row without a version (written before
    versions were recorded) and a URI listed without one (a list of URIs) are not changed: skipped by
    URI, as before."""
    return frozenset(
        uri
        for uri, version in listed.items()
        if (s := done.stamps.get(uri)) is not None and s.version != version
    )


def still_done_ids(done: Done, changed: Set[str]) -> frozenset[str]:
    """The image ids a job may skip once read: done's, less the old contents of the ``changed`` URIs,
    whose rows their new ones supersede (that content, found under another URI, needs a row again)."""
    gone = {done.stamps[uri].image_id for uri in changed}
    return done.image_ids - gone if gone else done.image_ids


def repeated_ok(rows: Iterable[StoredRow]) -> set[str]:
    """The URIs with several OK rows: a job killed after writing a changed URI's new row, before dropping
    the old one (the newer row stays)."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for _, uri, is_error, _ in rows:
        if is_error:
            continue
        (repeated if uri in seen else seen).add(uri)
    return repeated


class Pending(NamedTuple):
    todo: list[str]  # the URIs to read, each once
    skipped: int  # scored OK before, or repeated in the list
    retried: int  # of ``todo``, the URIs that failed before


def pending(uris: Iterable[str], done: Done, changed: Set[str] = frozenset()) -> Pending:
    """The URIs still to score, each once: those never scored, those that failed, and the ``changed``
    ones (``changed_since``)."""
    todo, seen, skipped = [], set(done.uris), 0
    seen -= changed
    for uri in uris:
        if uri in seen:
            skipped += 1
            continue
        seen.add(uri)
        todo.append(uri)
    return Pending(todo, skipped, sum(1 for uri in todo if uri in done.failed))


@dataclass(frozen=True)
class RowAt:
    """Where a row of one model's version is in a results folder."""

    part: str  # the part's file name
    uri: str
    scored_at: datetime | None  # when its job wrote it: of two rows of a URI, the newer stays


def stale_errors(errors: Iterable[RowAt], superseded: Set[str]) -> set[RowAt]:
    """The error rows to drop: every one of a URI in ``superseded`` (it has an OK row, or this job wrote
    or settled it since), and of several error rows of one URI, all but the newest (a job killed after
    writing the retry's error row, before dropping the older one). Of several OK rows of one URI
    (``repeated_ok``) too, with nothing superseded: all but the newest."""
    newest: dict[str, RowAt] = {}
    stale: set[RowAt] = set()
    for e in errors:
        if e.uri in superseded:
            stale.add(e)
            continue
        other = newest.get(e.uri)
        if other is None:
            newest[e.uri] = e
            continue
        older, newest[e.uri] = sorted((other, e), key=_age)
        stale.add(older)
    return stale


def _age(e: RowAt) -> tuple[datetime, str]:
    # The part name breaks ties: the same choice on every run.
    return (e.scored_at or datetime.min.replace(tzinfo=UTC), e.part)


def needs_no_row(
    failed: Set[str], skipped: Iterable[str], dropped: Iterable[ScoreRow], changed: Set[str] = frozenset()
) -> set[str]:
    """The retried URIs (of ``failed``) and the ``changed`` ones that need no row of their own any more:
    their content is scored OK already, under another URI (read as SKIP, or a copy of an image this job
    scored, which the Deduper dropped), so nothing supersedes their old rows but ``finish``. A copy of an
    image that failed again is not among the retried ones: it keeps its error row. A changed URI's old
    row is of content it no longer holds: stale, whatever its copy's row says."""
    settled = {uri for uri in skipped if uri in failed or uri in changed}
    return settled | {r.uri for r in dropped if r.uri in changed or (r.error is None and r.uri in failed)}


@dataclass
class Deduper:
    """Drops rows whose key this job has written already (one photo under two URIs): one row per image."""

    seen: set[str] = field(default_factory=set)

    def new(self, rows: Iterable[ScoreRow]) -> tuple[list[ScoreRow], list[ScoreRow]]:
        """(the rows to write, the rows dropped)."""
        out, dropped = [], []
        for row in rows:
            if row.key in self.seen:
                dropped.append(row)
                continue
            self.seen.add(row.key)
            out.append(row)
        return out, dropped


class ResultSink(Protocol):
    def done(self, model_name: str, model_version: str) -> Done: ...

    def write(self, rows: Sequence[ScoreRow]) -> None: ...

    def finish(self, settled: Collection[str]) -> None:
        """After the job's last write: drop the rows that its rows supersede (error rows, changed URIs'
        old rows), and those of the ``settled`` URIs (``needs_no_row``)."""
        ...

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
            # Last: parts written before it had none, and read as null (current: see the docstring).
            ("source_version", pa.string()),
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
        "source_version": [r.source_version for r in rows],
    }
    return pa.Table.from_pydict(columns, schema=arrow_schema())


class ParquetSink:
    """A folder of ``part-<job>-<n>.parquet`` files, each complete or absent."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.job = uuid.uuid4().hex[:12]
        self._n = 0
        # Set by done(): this model version's error rows in the parts before this job (the ones a retry
        # may supersede), and the URIs among them this job has written rows for since; the URIs scored
        # OK before this job, and those among them it has written rows for since (changed URIs).
        self._model: tuple[str, str] | None = None
        self._errors: list[RowAt] = []
        self._failed: frozenset[str] = frozenset()  # their URIs
        self._retried: set[str] = set()
        self._ok: frozenset[str] = frozenset()
        self._replaced: set[str] = set()
        # The highest folder this sink creates: removed again by close() if the job wrote nothing (a
        # source that cannot be listed must not leave an empty results folder behind).
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        self._created = missing[-1] if missing else None
        folder.mkdir(parents=True, exist_ok=True)
        # One job per folder (lightbox.locks.Busy otherwise), taken before anything is read or removed:
        # a second job had scored every image again and removed the first's part being written.
        self._lock: int | None = locks.acquire(folder / WRITER_LOCK, f"bulk-scoring job writing to {folder}")
        # A killed job's half-written part: never a result. Only this sink's own names: the folder may
        # hold the user's files too (report.docx.tmp is theirs).
        for tmp in folder.glob(f"{PART_GLOB}{TMP_SUFFIX}"):
            log.info("removing %s, left by a killed job", tmp)
            tmp.unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.folder)

    def done(self, model_name: str, model_version: str) -> Done:
        """What ``model_name`` v``model_version`` has here: another model's v1 is not this one's. First
        drops the rows a killed job left superseded: of several OK rows of a URI all but the newest
        (``repeated_ok``), and the error rows beside an OK row of their URI or older than another error
        row of it (``stale_errors``)."""
        keys, errors = self._scan(model_name, model_version)
        repeated = repeated_ok(keys)
        if repeated:  # rare (a kill between two steps): read again once repaired
            older = stale_errors(self._locate(model_name, model_version, repeated, ok_only=True), set())
            self._drop(model_name, model_version, older, errors_only=False)
            keys, errors = self._scan(model_name, model_version)
        done = done_from(keys)
        stale = stale_errors(errors, done.uris)
        self._drop(model_name, model_version, stale)
        self._model = (model_name, model_version)
        self._errors = [e for e in errors if e not in stale]
        self._failed = frozenset(e.uri for e in self._errors)
        self._ok = done.uris
        return done

    def _scan(self, model_name: str, model_version: str) -> tuple[list[StoredRow], list[RowAt]]:
        """(image_id, uri, failed, source_version) of this model version's rows, and where its error
        rows are."""
        import pyarrow.compute as pc

        columns = ["image_id", "uri", "model_name", "model_version", "error", "scored_at", "source_version"]
        keys: list[StoredRow] = []
        errors: list[RowAt] = []
        for part in _parts(self.folder):
            mine = _mine(_read_part(part, self.folder, columns), model_name, model_version)
            failed = pc.is_valid(mine["error"])
            keys += zip(
                mine["image_id"].to_pylist(),
                mine["uri"].to_pylist(),
                failed.to_pylist(),
                mine["source_version"].to_pylist(),
                strict=True,
            )
            bad = mine.filter(failed)  # few rows, most often: only theirs become objects
            when = bad["scored_at"].to_pylist()
            errors += [RowAt(part.name, u, t) for u, t in zip(bad["uri"].to_pylist(), when, strict=True)]
        return keys, errors

    def _locate(
        self, model_name: str, model_version: str, uris: Set[str], *, ok_only: bool = False
    ) -> list[RowAt]:
        """Where this model version's rows of ``uris`` are in the parts before this job (its own hold
        the rows that supersede them): a second scan, only for the few URIs changed or repaired."""
        import pyarrow as pa
        import pyarrow.compute as pc

        columns = ["uri", "model_name", "model_version", "error", "scored_at"]
        value_set = pa.array(sorted(uris), pa.string())
        found: list[RowAt] = []
        for part in _parts(self.folder):
            if part.name.startswith(f"part-{self.job}-"):
                continue
            mine = _mine(_read_part(part, self.folder, columns), model_name, model_version)
            hit = pc.is_in(mine["uri"], value_set=value_set)
            if ok_only:
                hit = pc.and_(hit, pc.is_null(mine["error"]))
            rows = mine.filter(hit)
            when = rows["scored_at"].to_pylist()
            found += [RowAt(part.name, u, t) for u, t in zip(rows["uri"].to_pylist(), when, strict=True)]
        return found

    def write(self, rows: Sequence[ScoreRow]) -> None:
        import pyarrow.parquet as pq

        if not rows:
            return
        final = self.folder / f"part-{self.job}-{self._n:06d}.parquet"
        _replace_atomically(final, lambda tmp: pq.write_table(to_table(rows), tmp))
        self._n += 1
        self._retried.update(r.uri for r in rows if r.uri in self._failed)
        # A URI scored OK before is written again only when its source changed (``changed_since``).
        self._replaced.update(r.uri for r in rows if r.uri in self._ok)

    def finish(self, settled: Collection[str]) -> None:
        """Rewrites the parts before this job that hold rows this job superseded: the error rows of the
        retried URIs it wrote rows for and the old rows of the changed ones (in its own, newer parts, on
        disk by now), and the old rows of ``settled``."""
        if self._model is None:  # done() was not asked: nothing is known to be superseded
            return
        superseded = self._retried | self._replaced | set(settled)
        stale = stale_errors(self._errors, superseded)
        gone = superseded & self._ok  # changed URIs' old rows: not among the error rows done() found
        old = self._locate(*self._model, gone) if gone else []
        # Every row of those URIs in the older parts goes: a failed URI has only error rows there, and
        # a changed one its old content's row.
        self._drop(*self._model, [*stale, *old], errors_only=False)
        self._errors = [e for e in self._errors if e not in stale]
        self._ok = self._ok - gone

    def _drop(
        self, model_name: str, model_version: str, stale: Iterable[RowAt], *, errors_only: bool = True
    ) -> None:
        for part, uris in _by_part(stale).items():
            _rewrite_without(self.folder / part, model_name, model_version, uris, errors_only=errors_only)

    def close(self) -> None:
        if self._lock is None:
            return
        # The lock file goes with the job (the folder holds results only), removed while still held: a
        # job starting in between gets the lock of a new file, not of this one's removed name.
        if locks.holds(self._lock) == 1:
            (self.folder / WRITER_LOCK).unlink(missing_ok=True)
        locks.release(self._lock)
        self._lock = None
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


def _mine(table: pa.Table, model_name: str, model_version: str) -> pa.Table:
    """The rows of one model's version."""
    return table.filter(_is_mine(table, model_name, model_version))


def _is_mine(table: pa.Table, model_name: str, model_version: str) -> pa.ChunkedArray:
    """Which rows are one model's version's."""
    import pyarrow.compute as pc

    return pc.and_(pc.equal(table["model_name"], model_name), pc.equal(table["model_version"], model_version))


def _by_part(rows: Iterable[RowAt]) -> dict[str, frozenset[str]]:
    """part name -> the URIs whose rows go from it."""
    out: dict[str, set[str]] = {}
    for e in rows:
        out.setdefault(e.part, set()).add(e.uri)
    return {part: frozenset(uris) for part, uris in out.items()}


def _rewrite_without(
    part: Path, model_name: str, model_version: str, uris: frozenset[str], *, errors_only: bool
) -> None:
    """The part less this model version's rows of ``uris`` (only their error rows, ``errors_only``),
    every other row as it was, replacing it atomically (removed when nothing is left): a reader sees the
    old part or the new one."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = _read_part(part, part.parent)
    drop = pc.and_(
        _is_mine(table, model_name, model_version),
        pc.is_in(table["uri"], value_set=pa.array(sorted(uris), pa.string())),
    )
    if errors_only:
        drop = pc.and_(drop, pc.is_valid(table["error"]))
    kept = table.filter(pc.invert(pc.fill_null(drop, False)))
    if kept.num_rows == table.num_rows:
        return
    log.info("%s: dropping %d rows that newer rows superseded", part.name, table.num_rows - kept.num_rows)
    if kept.num_rows == 0:
        part.unlink()
        _fsync_dir(part.parent)
        return
    _replace_atomically(part, lambda tmp: pq.write_table(kept, tmp))


def _replace_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """``write`` to ``<final>.tmp``, then rename it over ``final``: on disk before it is visible (a
    crash cannot leave an empty part), and the rename on disk before this returns (what comes after,
    such as dropping the rows it supersedes from older parts, must not outlive it in a power cut)."""
    tmp = final.with_name(final.name + TMP_SUFFIX)
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob(PART_GLOB))


def _read_part(part: Path, folder: Path, columns: list[str] | None = None) -> pa.Table:
    """One part; BadDestination where it is not one of ours (not parquet, or other columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(part, columns=columns, schema=arrow_schema())
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        lfs = " (a Git LFS pointer? `git lfs pull` it)" if _lfs_pointer(part) else ""
        raise BadDestination(
            f"{part} is not a results part{lfs}: {first}; a results folder holds only the"
            f" {PART_GLOB} files bulk scoring writes: move it out of {folder}, or give --out another"
            " folder"
        ) from None


def read_parts(folder: Path, columns: list[str] | None = None) -> pa.Table | None:
    """Every complete part of a results folder as one table (None when there is none). BadDestination
    names a ``part-*.parquet`` that is not one of ours (not parquet, or other columns)."""
    import pyarrow as pa

    tables = []
    for part in _parts(folder):
        try:
            tables.append(_read_part(part, folder, columns))
        except FileNotFoundError:
            # Removed since it was listed: by a job that dropped the last rows it held, superseded.
            continue
    return pa.concat_tables(tables) if tables else None


def _lfs_pointer(path: Path) -> bool:
    from lightbox.source_tree import LFS_POINTER

    try:
        with path.open("rb") as f:
            return f.read(len(LFS_POINTER)) == LFS_POINTER
    except OSError:
        return False


# --- PostgreSQL ----------------------------------------------------------------------------------------


# (image_id, model_name, model_version, source_uri) of a results row a changed URI's new row supersedes.
ResultKey = tuple[str, str, str, str]


class PostgresSink:
    """The upload consumer's results table (lightbox.adapters.postgres), upserted; failed images go to
    ``<table>_errors`` beside it, so readers of the results table see scores only, as before."""

    def __init__(self, dsn: str, table: str) -> None:
        from lightbox.adapters import postgres

        self.table = table
        self.errors_table = f"{table}_errors"
        self._model: tuple[str, str] | None = None  # set by done()
        self._stamps: Mapping[str, Stamp] = {}  # done()'s: the rows a changed URI's new row supersedes
        self._db = postgres.connect(dsn)
        postgres.ensure_results_table(self._db, table)
        postgres.ensure_errors_table(self._db, self.errors_table)

    def describe(self) -> str:
        return f"postgres table {self.table} (errors: {self.errors_table})"

    def done(self, model_name: str, model_version: str) -> Done:
        from lightbox.adapters import postgres

        keys = postgres.scored_keys(self._db, self.table, self.errors_table, model_name, model_version)
        done = done_from(keys)
        # An error row beside a score of its URI (the upload consumer scored that URI since, say): the
        # score wins, as in a results folder, and the rerun does not retry it.
        stale = {uri for _, uri, failed, _ in keys if failed and uri in done.uris}
        postgres.delete_errors(self._db, self.errors_table, model_name, model_version, stale)
        self._model = (model_name, model_version)
        self._stamps = done.stamps
        return done

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
                source_version=r.source_version,
            )
            for r in rows
            if r.error is None and r.image_id is not None and r.tag_probs is not None
        ]
        failed = [
            postgres.ErrorRow(
                r.uri, r.model_version, r.model_name, r.image_id, r.error or "", r.source_version
            )
            for r in rows
            if r.error is not None
        ]
        # One transaction: a retry's score and the deletion of its URI's error row (keyed by URI, not
        # by the image id the score has) are committed together; a new failure replaces the old one; a
        # changed URI's new row and the deletion of its old content's row, too.
        replaced = self._superseded([(r.uri, None if r.error else r.image_id) for r in rows])
        postgres.write_bulk_rows(self._db, self.table, self.errors_table, scored, failed, replaced)

    def _superseded(self, written: Iterable[tuple[str, str | None]]) -> list[ResultKey]:
        """The results rows that (uri, new image id or None for an error) of this job supersede: the old
        content's row of each changed URI, unless its new content is the same (the upsert updated it)."""
        if self._model is None:
            return []
        name, version = self._model
        return [
            (s.image_id, name, version, uri)
            for uri, image_id in written
            if (s := self._stamps.get(uri)) is not None and s.image_id is not None and s.image_id != image_id
        ]

    def finish(self, settled: Collection[str]) -> None:
        from lightbox.adapters import postgres

        if self._model is not None:
            postgres.delete_errors(self._db, self.errors_table, *self._model, settled)
            postgres.delete_results(self._db, self.table, self._superseded((uri, None) for uri in settled))

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
