"""PostgreSQL through psycopg2: the only module that imports it. The upload consumer's results table.

One row per (image_id, model_name, model_version): a redelivered message (the consumer died after the
commit but before the ack) upserts the same row again instead of adding one, so results are exactly-once
even though delivery is at-least-once. The model's name is part of the key: two registered models may
both have a version 1 (``pets`` v1 and ``places`` v1, served side by side), and neither may overwrite
or hide the other's rows. Tables made by earlier versions, keyed by (image_id, model_version), are
migrated in place when a writer ensures them (``ensure_results_table``, ``ensure_errors_table``), and
so are tables made before rows recorded their ``source_version`` (bulk scoring's listed size and mtime
or ETag: lightbox.results): the column is added, NULL in the rows already there, which bulk scoring
takes as current.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lightbox.adapters import ServiceUnavailable
from lightbox.settings import redact_url

if TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection

log = logging.getLogger(__name__)

RESULTS_KEY = ("image_id", "model_name", "model_version")
ERRORS_KEY = ("uri", "model_name", "model_version")
# The keys of tables made before the model's name was part of them: replaced by the ones above.
OLD_RESULTS_KEY = ("image_id", "model_version")
OLD_ERRORS_KEY = ("uri", "model_version")
SOURCE_VERSION = "source_version"  # added to tables made before it (``_add_column``)


@dataclass(frozen=True)
class ResultRow:
    image_id: str
    model_name: str
    model_version: str
    score: float | None  # None: a tags-only model answers no score
    tag_probs: dict[str, float]  # every tag's probability: readers pick their own threshold
    source_uri: str
    source_version: str | None = None  # bulk scoring's, as listed; None: unknown (an upload)


def connect(dsn: str) -> Connection:
    import psycopg2

    try:
        return psycopg2.connect(dsn)
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable(
            f"cannot reach the results database {redact_url(dsn)}: {first}; check LIGHTBOX_RESULTS_DSN",
            first,
        ) from None


def _lock_for_schema(cur: Any, table: str) -> None:
    """Serializes creating and migrating ``table`` among writers starting at once (consumers, bulk
    jobs), until the transaction ends: two ``CREATE TABLE IF NOT EXISTS`` racing can both try to create
    it, and two migrations must not both drop and add the key."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"lightbox.results_schema:{table}",))


def primary_key(cur: Any, table: str) -> tuple[str, tuple[str, ...]] | None:
    """(constraint name, its columns in order) of ``table``'s primary key, read from the catalog; None
    when the table has none. The table is resolved as the statements here name it (search_path)."""
    cur.execute(
        """
        SELECT c.conname, array_agg(a.attname::text ORDER BY k.ord)
        FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.conrelid = to_regclass(quote_ident(%s)) AND c.contype = 'p'
        GROUP BY c.conname
        """,
        (table,),
    )
    row = cur.fetchone()
    return None if row is None else (row[0], tuple(row[1]))


def _migrate_key(cur: Any, table: str, key: tuple[str, ...], old: tuple[str, ...]) -> bool:
    """Make ``key`` the primary key of ``table`` if it has ``old`` (or none), keeping every row: the new
    key only adds a column to the old one, so rows unique under the old key stay unique. Called under
    ``_lock_for_schema``, in the transaction that checked the table: idempotent, and a second writer
    starting at once waits, then finds the key already migrated. True when it changed the table."""
    from psycopg2 import sql

    current = primary_key(cur, table)
    if current is not None and current[1] == key:
        return False
    if current is not None and current[1] != old:
        raise RuntimeError(
            f"table {table} has primary key ({', '.join(current[1])}); lightbox writes it keyed by "
            f"({', '.join(key)}): migrate it by hand or use another table (LIGHTBOX_RESULTS_TABLE)"
        )
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in key)
    if current is None:
        cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(sql.Identifier(table), columns))
    else:
        name = sql.Identifier(current[0])  # the same name as before: readers' tooling may refer to it
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(table), name))
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                sql.Identifier(table), name, columns
            )
        )
    log.info(
        "table %s: primary key (%s) -> (%s)", table, ", ".join(current[1] if current else ()), ", ".join(key)
    )
    return True


def _add_column(cur: Any, table: str, column: str, kind: str) -> bool:
    """Add a nullable ``column`` to ``table`` made before it existed, every row kept (NULL in it).
    Called under ``_lock_for_schema``, in the transaction that checked the table: the catalog is read
    first, so that a table that has it already is not altered (ALTER TABLE locks out its readers, even
    with IF NOT EXISTS), and a second writer starting at once finds it added. True when it changed it."""
    from psycopg2 import sql

    cur.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(quote_ident(%s)) AND attname = %s"
        " AND NOT attisdropped",
        (table, column),
    )
    if cur.fetchone() is not None:
        return False
    cur.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
            sql.Identifier(table), sql.Identifier(column), sql.SQL(kind)
        )
    )
    log.info("table %s: added column %s", table, column)
    return True


def ensure_results_table(conn: Connection, table: str) -> None:
    """Create the results table, or bring one made by an earlier version to this layout (its rows kept)."""
    from psycopg2 import sql

    with conn, conn.cursor() as cur:  # `with conn`: commit on success, roll back on error
        _lock_for_schema(cur, table)
        cur.execute(
            sql.SQL(
                """
                CREATE TABLE IF NOT EXISTS {} (
                    image_id      text        NOT NULL,
                    model_version text        NOT NULL,
                    model_name    text        NOT NULL,
                    score         real,
                    tag_probs     jsonb       NOT NULL,
                    source_uri    text        NOT NULL,
                    scored_at     timestamptz NOT NULL DEFAULT now(),
                    attempts      integer     NOT NULL DEFAULT 1,
                    source_version text,
                    PRIMARY KEY (image_id, model_name, model_version)
                )
                """
            ).format(sql.Identifier(table))
        )
        # Tables made before tags-only models existed: their score column allowed no NULL.
        cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN score DROP NOT NULL").format(sql.Identifier(table)))
        # Tables made before the model's name was in the key.
        _migrate_key(cur, table, RESULTS_KEY, OLD_RESULTS_KEY)
        _add_column(cur, table, SOURCE_VERSION, "text")  # and before rows recorded their source version


def upsert_results(conn: Connection, table: str, rows: Sequence[ResultRow]) -> None:
    """Insert or replace the rows in one transaction (committed when this returns)."""
    if not rows:
        return
    with conn, conn.cursor() as cur:
        _upsert_results(cur, table, rows)


def _upsert_results(cur: Any, table: str, rows: Sequence[ResultRow]) -> None:
    from psycopg2 import sql
    from psycopg2.extras import execute_values

    if not rows:
        return
    keys = [(r.image_id, r.model_name, r.model_version) for r in rows]
    if len(set(keys)) != len(keys):
        # One statement cannot touch a row twice (ON CONFLICT would raise): callers dedupe first.
        raise ValueError("upsert_results: duplicate (image_id, model_name, model_version) in one call")
    query = sql.SQL(
        """
        INSERT INTO {t} (image_id, model_version, model_name, score, tag_probs, source_uri, source_version)
        VALUES %s
        ON CONFLICT (image_id, model_name, model_version) DO UPDATE SET
            score = EXCLUDED.score,
            tag_probs = EXCLUDED.tag_probs,
            source_uri = EXCLUDED.source_uri,
            source_version = EXCLUDED.source_version,
            scored_at = now(),
            attempts = {t}.attempts + 1
        """
    ).format(t=sql.Identifier(table))
    values = [
        (
            r.image_id,
            r.model_version,
            r.model_name,
            r.score,
            json.dumps(r.tag_probs),
            r.source_uri,
            r.source_version,
        )
        for r in rows
    ]
    execute_values(cur, query, values)


def fetch_results(conn: Connection, table: str) -> list[dict]:
    from psycopg2 import sql
    from psycopg2.extras import RealDictCursor

    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {} ORDER BY image_id, model_name, model_version").format(
                sql.Identifier(table)
            )
        )
        return [dict(r) for r in cur.fetchall()]


def recent_predictions(
    conn: Connection, table: str, model_name: str, version: str, last: int
) -> list[tuple[float | None, dict[str, float]]]:
    """The newest ``last`` (score, tag_probs) of one model version: what the drift monitor compares."""
    from psycopg2 import sql

    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT score, tag_probs FROM {} WHERE model_name = %s AND model_version = %s "
                "ORDER BY scored_at DESC LIMIT %s"
            ).format(sql.Identifier(table)),
            (model_name, version, last),
        )
        return [(None if s is None else float(s), dict(t)) for s, t in cur.fetchall()]


# --- bulk scoring (pipelines/score_catalog.py) ---------------------------------------------------------


@dataclass(frozen=True)
class ErrorRow:
    """An image bulk scoring could not score. Beside the results table, not in it: its readers expect
    a score or a tags-only model's NULL in every row, never a failure."""

    uri: str
    model_version: str
    model_name: str
    image_id: str | None  # None: nothing could be read (a missing file)
    error: str
    source_version: str | None = None  # as listed; None: unknown


def ensure_errors_table(conn: Connection, table: str) -> None:
    """Create the errors table, or bring one made by an earlier version to this layout (rows kept)."""
    from psycopg2 import sql

    with conn, conn.cursor() as cur:
        _lock_for_schema(cur, table)
        cur.execute(
            sql.SQL(
                """
                CREATE TABLE IF NOT EXISTS {} (
                    uri           text        NOT NULL,
                    model_version text        NOT NULL,
                    model_name    text        NOT NULL,
                    image_id      text,
                    error         text        NOT NULL,
                    failed_at     timestamptz NOT NULL DEFAULT now(),
                    source_version text,
                    PRIMARY KEY (uri, model_name, model_version)
                )
                """
            ).format(sql.Identifier(table))
        )
        _migrate_key(cur, table, ERRORS_KEY, OLD_ERRORS_KEY)
        _add_column(cur, table, SOURCE_VERSION, "text")


def upsert_errors(conn: Connection, table: str, rows: Sequence[ErrorRow]) -> None:
    if not rows:
        return
    with conn, conn.cursor() as cur:
        _upsert_errors(cur, table, rows)


def _upsert_errors(cur: Any, table: str, rows: Sequence[ErrorRow]) -> None:
    from psycopg2 import sql
    from psycopg2.extras import execute_values

    if not rows:
        return
    query = sql.SQL(
        """
        INSERT INTO {t} (uri, model_version, model_name, image_id, error, source_version) VALUES %s
        ON CONFLICT (uri, model_name, model_version) DO UPDATE SET
            image_id = EXCLUDED.image_id, error = EXCLUDED.error, failed_at = now(),
            source_version = EXCLUDED.source_version
        """
    ).format(t=sql.Identifier(table))
    values = {
        (r.uri, r.model_name, r.model_version): (
            r.uri,
            r.model_version,
            r.model_name,
            r.image_id,
            r.error,
            r.source_version,
        )
        for r in rows
    }
    execute_values(cur, query, list(values.values()))


def _delete_rows(cur: Any, table: str, columns: Sequence[str], keys: Iterable[tuple[str, ...]]) -> None:
    """Deletes the rows of ``table`` whose ``columns`` hold one of ``keys``, in one statement."""
    from psycopg2 import sql
    from psycopg2.extras import execute_values

    values = sorted(set(keys))
    if not values:
        return
    query = sql.SQL("DELETE FROM {t} AS r USING (VALUES %s) AS k ({names}) WHERE {match}").format(
        t=sql.Identifier(table),
        names=sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(columns))),
        match=sql.SQL(" AND ").join(
            sql.SQL("r.{} = k.{}").format(sql.Identifier(c), sql.Identifier(f"k{i}"))
            for i, c in enumerate(columns)
        ),
    )
    execute_values(cur, query, values)


def _delete_errors_of(cur: Any, table: str, keys: Iterable[tuple[str, str, str]]) -> None:
    """Deletes the error rows of (uri, model_name, model_version) ``keys``."""
    _delete_rows(cur, table, ERRORS_KEY, keys)


def delete_errors(
    conn: Connection, table: str, model_name: str, model_version: str, uris: Iterable[str]
) -> None:
    """Deletes one model version's error rows of ``uris`` (superseded: their images are scored)."""
    keys = [(uri, model_name, model_version) for uri in uris]
    if not keys:
        return
    with conn, conn.cursor() as cur:
        _delete_errors_of(cur, table, keys)


def _delete_results_of(cur: Any, table: str, keys: Iterable[tuple[str, str, str, str]]) -> None:
    """Deletes the results rows of (image_id, model_name, model_version, source_uri) ``keys``: by the
    primary key (no scan of the table), and only while the row still names that URI (an upsert of the
    same content under another URI, a copy's, took the row over: it is that URI's now)."""
    _delete_rows(cur, table, (*RESULTS_KEY, "source_uri"), keys)


def delete_results(conn: Connection, table: str, keys: Iterable[tuple[str, str, str, str]]) -> None:
    """Deletes the results rows of (image_id, model_name, model_version, source_uri) ``keys``
    (superseded: their URIs' content changed, and is scored under another URI)."""
    keys = list(keys)
    if not keys:
        return
    with conn, conn.cursor() as cur:
        _delete_results_of(cur, table, keys)


def write_bulk_rows(
    conn: Connection,
    table: str,
    errors_table: str,
    scored: Sequence[ResultRow],
    failed: Sequence[ErrorRow],
    replaced: Sequence[tuple[str, str, str, str]] = (),
) -> None:
    """One flush of bulk scoring, in one transaction: the scores upserted, the error rows of their URIs
    deleted (a retry's score supersedes the failure, which is keyed by URI, not by the image id the score
    has), the failures upserted (a failure again replaces the older one), and the ``replaced`` results
    rows deleted (image_id, model_name, model_version, source_uri: the old content of a URI edited in
    place, which its new row supersedes), after the upserts (``_delete_results_of`` says why)."""
    with conn, conn.cursor() as cur:
        _upsert_results(cur, table, scored)
        _delete_errors_of(cur, errors_table, [(r.source_uri, r.model_name, r.model_version) for r in scored])
        _upsert_errors(cur, errors_table, failed)
        _delete_results_of(cur, table, replaced)


def scored_keys(
    conn: Connection, table: str, errors_table: str, model_name: str, model_version: str
) -> list[tuple[str | None, str, bool, str | None]]:
    """(image_id, uri, failed, source_version) of every row one model's version has, scored or failed: a
    resumed bulk job skips the scored ones (while their source version is the listing's) and retries the
    failed ones (another model's rows of the same version number are not this one's). A server-side
    cursor: a catalog's keys are read in pages, not all at once into the driver."""
    from psycopg2 import sql

    query = sql.SQL(
        "SELECT image_id, source_uri, false, source_version FROM {r}"
        " WHERE model_name = %(n)s AND model_version = %(v)s"
        " UNION ALL SELECT image_id, uri, true, source_version FROM {e}"
        " WHERE model_name = %(n)s AND model_version = %(v)s"
    ).format(r=sql.Identifier(table), e=sql.Identifier(errors_table))
    with conn, conn.cursor(name="lightbox_scored_keys") as cur:
        cur.itersize = 10_000
        cur.execute(query, {"n": model_name, "v": model_version})
        return [(image_id, uri, bool(failed), version) for image_id, uri, failed, version in cur]


def fetch_errors(conn: Connection, table: str) -> list[dict]:
    from psycopg2 import sql
    from psycopg2.extras import RealDictCursor

    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {} ORDER BY uri, model_name, model_version").format(sql.Identifier(table))
        )
        return [dict(r) for r in cur.fetchall()]
