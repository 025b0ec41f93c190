"""PostgreSQL through psycopg2: the only module that imports it. The upload consumer's results table.

One row per (image_id, model_version): a redelivered message (the consumer died after the commit but
before the ack) upserts the same row again instead of adding one, so results are exactly-once even
though delivery is at-least-once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lightbox.adapters import ServiceUnavailable
from lightbox.settings import redact_url

if TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection


@dataclass(frozen=True)
class ResultRow:
    image_id: str
    model_name: str
    model_version: str
    score: float | None  # None: a tags-only model answers no score
    tag_probs: dict[str, float]  # every tag's probability: readers pick their own threshold
    source_uri: str


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


def ensure_results_table(conn: Connection, table: str) -> None:
    from psycopg2 import sql

    with conn, conn.cursor() as cur:  # `with conn`: commit on success, roll back on error
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
                    PRIMARY KEY (image_id, model_version)
                )
                """
            ).format(sql.Identifier(table))
        )
        # Tables made before tags-only models existed: their score column allowed no NULL.
        cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN score DROP NOT NULL").format(sql.Identifier(table)))


def upsert_results(conn: Connection, table: str, rows: Sequence[ResultRow]) -> None:
    """Insert or replace the rows in one transaction (committed when this returns)."""
    from psycopg2 import sql
    from psycopg2.extras import execute_values

    if not rows:
        return
    keys = [(r.image_id, r.model_version) for r in rows]
    if len(set(keys)) != len(keys):
        # One statement cannot touch a row twice (ON CONFLICT would raise): callers dedupe first.
        raise ValueError("upsert_results: duplicate (image_id, model_version) in one call")
    query = sql.SQL(
        """
        INSERT INTO {t} (image_id, model_version, model_name, score, tag_probs, source_uri)
        VALUES %s
        ON CONFLICT (image_id, model_version) DO UPDATE SET
            score = EXCLUDED.score,
            tag_probs = EXCLUDED.tag_probs,
            source_uri = EXCLUDED.source_uri,
            scored_at = now(),
            attempts = {t}.attempts + 1
        """
    ).format(t=sql.Identifier(table))
    values = [
        (r.image_id, r.model_version, r.model_name, r.score, json.dumps(r.tag_probs), r.source_uri)
        for r in rows
    ]
    with conn, conn.cursor() as cur:
        execute_values(cur, query.as_string(conn), values)


def fetch_results(conn: Connection, table: str) -> list[dict]:
    from psycopg2 import sql
    from psycopg2.extras import RealDictCursor

    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {} ORDER BY image_id, model_version").format(sql.Identifier(table))
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


def ensure_errors_table(conn: Connection, table: str) -> None:
    from psycopg2 import sql

    with conn, conn.cursor() as cur:
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
                    PRIMARY KEY (uri, model_version)
                )
                """
            ).format(sql.Identifier(table))
        )


def upsert_errors(conn: Connection, table: str, rows: Sequence[ErrorRow]) -> None:
    from psycopg2 import sql
    from psycopg2.extras import execute_values

    if not rows:
        return
    query = sql.SQL(
        """
        INSERT INTO {t} (uri, model_version, model_name, image_id, error) VALUES %s
        ON CONFLICT (uri, model_version) DO UPDATE SET
            image_id = EXCLUDED.image_id, error = EXCLUDED.error, failed_at = now()
        """
    ).format(t=sql.Identifier(table))
    values = {
        (r.uri, r.model_version): (r.uri, r.model_version, r.model_name, r.image_id, r.error) for r in rows
    }
    with conn, conn.cursor() as cur:
        execute_values(cur, query.as_string(conn), list(values.values()))


def scored_keys(
    conn: Connection, table: str, errors_table: str, model_version: str
) -> list[tuple[str | None, str]]:
    """(image_id, uri) of every row one model version has, scored or failed: what a resumed bulk job
    skips. A server-side cursor: a catalog's keys are read in pages, not all at once into the driver."""
    from psycopg2 import sql

    query = sql.SQL(
        "SELECT image_id, source_uri FROM {r} WHERE model_version = %(v)s "
        "UNION ALL SELECT image_id, uri FROM {e} WHERE model_version = %(v)s"
    ).format(r=sql.Identifier(table), e=sql.Identifier(errors_table))
    with conn, conn.cursor(name="lightbox_scored_keys") as cur:
        cur.itersize = 10_000
        cur.execute(query, {"v": model_version})
        return [(image_id, uri) for image_id, uri in cur]


def fetch_errors(conn: Connection, table: str) -> list[dict]:
    from psycopg2 import sql
    from psycopg2.extras import RealDictCursor

    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(sql.SQL("SELECT * FROM {} ORDER BY uri, model_version").format(sql.Identifier(table)))
        return [dict(r) for r in cur.fetchall()]
