"""The results tables in PostgreSQL are keyed by (image, model name, model version): two registered models
with the same version number (pets v1, places v1, served together) keep their own rows, and a resumed job
of one skips only its own. Tables made by earlier versions, keyed by (image, model version), are migrated
in place by the writer that ensures them, their rows kept, once even when writers start together."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from conftest import PgDatabase

from lightbox.adapters import postgres
from lightbox.results import Done, PostgresSink, ScoreRow

if TYPE_CHECKING:
    from psycopg2.extensions import connection as Connection

TABLE = "image_scores"
ERRORS = f"{TABLE}_errors"


@pytest.fixture
def db(pg_database: PgDatabase) -> Iterator[Connection]:
    conn = postgres.connect(pg_database.dsn)
    yield conn
    conn.close()


def _result(image_id: str, name: str, version: str = "1", score: float = 0.5) -> postgres.ResultRow:
    return postgres.ResultRow(image_id, name, version, score, {"t": score}, f"/photos/{image_id}.jpg")


def _score_row(uri: str, image_id: str, name: str, error: str | None = None) -> ScoreRow:
    return ScoreRow(
        uri=uri,
        image_id=image_id,
        content_hash=image_id + "ff",
        model_name=name,
        model_version="1",
        score=None if error else 0.25,
        tag_probs=None if error else {"t": 0.25},
        error=error,
    )


def _old_layout(conn: Connection, table: str = TABLE) -> None:
    """The tables as lightbox created them before the model's name was in their keys."""
    with conn, conn.cursor() as cur:
        cur.execute(
            f"""CREATE TABLE {table} (
                image_id text NOT NULL, model_version text NOT NULL, model_name text NOT NULL,
                score real, tag_probs jsonb NOT NULL, source_uri text NOT NULL,
                scored_at timestamptz NOT NULL DEFAULT now(), attempts integer NOT NULL DEFAULT 1,
                PRIMARY KEY (image_id, model_version))"""
        )
        cur.execute(
            f"""CREATE TABLE {table}_errors (
                uri text NOT NULL, model_version text NOT NULL, model_name text NOT NULL, image_id text,
                error text NOT NULL, failed_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (uri, model_version))"""
        )
        cur.execute(
            f"INSERT INTO {table} (image_id, model_version, model_name, score, tag_probs, source_uri) VALUES "
            "('a', '1', 'pets', 0.1, '{\"t\": 0.1}', '/photos/a.jpg'), "
            "('b', '1', 'pets', 0.2, '{\"t\": 0.2}', '/photos/b.jpg')"
        )
        cur.execute(
            f"INSERT INTO {table}_errors (uri, model_version, model_name, image_id, error) VALUES "
            "('/photos/bad.jpg', '1', 'pets', 'c', 'corrupt')"
        )


def _keys(conn: Connection) -> list[tuple[str, str, str]]:
    return [(r["image_id"], r["model_name"], r["model_version"]) for r in postgres.fetch_results(conn, TABLE)]


def _primary_key(conn: Connection, table: str) -> tuple[str, ...] | None:
    with conn, conn.cursor() as cur:
        found = postgres.primary_key(cur, table)
    return None if found is None else found[1]


def test_two_models_with_the_same_version_keep_their_own_rows(
    db: Connection, pg_database: PgDatabase
) -> None:
    postgres.ensure_results_table(db, TABLE)
    postgres.ensure_errors_table(db, ERRORS)
    postgres.upsert_results(db, TABLE, [_result("a", "pets", score=0.1), _result("b", "pets", score=0.2)])
    # The upload consumer of the other model (LIGHTBOX_MODEL_NAME=places), also at its version 1.
    postgres.upsert_results(db, TABLE, [_result("a", "places", score=0.9)])
    assert _keys(db) == [("a", "pets", "1"), ("a", "places", "1"), ("b", "pets", "1")]
    rows = {(r["image_id"], r["model_name"]): r for r in postgres.fetch_results(db, TABLE)}
    assert rows["a", "pets"]["score"] == pytest.approx(0.1) and rows["a", "places"]["score"] == pytest.approx(
        0.9
    )
    assert rows["a", "pets"]["attempts"] == 1  # not overwritten by the other model's row

    # Bulk scoring into the same tables: each model's resumed job skips only its own rows and failures.
    sink = PostgresSink(pg_database.dsn, TABLE)
    try:
        sink.write([_score_row("/photos/bad.jpg", "c", "pets", error="corrupt")])
        sink.write([_score_row("/photos/bad.jpg", "c", "places", error="corrupt")])
        # A failure is not done: a rerun retries it.
        assert sink.done("pets", "1") == Done(
            frozenset({"/photos/a.jpg", "/photos/b.jpg"}),
            frozenset({"a", "b"}),
            frozenset({"/photos/bad.jpg"}),
        )
        assert sink.done("places", "1") == Done(
            frozenset({"/photos/a.jpg"}), frozenset({"a"}), frozenset({"/photos/bad.jpg"})
        )
        assert sink.done("lightbox", "1") == Done()
    finally:
        sink.close()
    errors = postgres.fetch_errors(db, ERRORS)
    assert [(e["uri"], e["model_name"]) for e in errors] == [
        ("/photos/bad.jpg", "pets"),
        ("/photos/bad.jpg", "places"),
    ]


def test_a_score_of_a_failed_uri_supersedes_its_error_row(pg_database: PgDatabase, db: Connection) -> None:
    """The error row is keyed by URI, the score by the content hash it was read with: the score deletes
    the error row of its URI (pets' only), and an error row found beside a score is dropped by done()."""
    sink = PostgresSink(pg_database.dsn, TABLE)
    try:
        sink.write([_score_row("/photos/gone.jpg", "", "pets", "not found")])
        sink.write([_score_row("/photos/gone.jpg", "", "places", "not found")])
        sink.write([_score_row("/photos/bad.jpg", "c", "pets", "corrupt")])
        assert sink.done("pets", "1").failed == {"/photos/gone.jpg", "/photos/bad.jpg"}
        sink.write(
            [_score_row("/photos/gone.jpg", "g", "pets"), _score_row("/photos/bad.jpg", "c", "pets", "x")]
        )
        assert [(e["uri"], e["model_name"], e["error"]) for e in postgres.fetch_errors(db, ERRORS)] == [
            ("/photos/bad.jpg", "pets", "x"),  # failed again: one row, the newer
            ("/photos/gone.jpg", "places", "not found"),
        ]
        # The upload consumer scored bad.jpg since (another job's failure, a consumer's score).
        postgres.upsert_results(db, TABLE, [postgres.ResultRow("d", "pets", "1", 0.5, {}, "/photos/bad.jpg")])
        assert sink.done("pets", "1") == Done(
            frozenset({"/photos/gone.jpg", "/photos/bad.jpg"}), frozenset({"g", "d"})
        )
        assert [e["model_name"] for e in postgres.fetch_errors(db, ERRORS)] == ["places"]
    finally:
        sink.close()


def test_an_old_layout_table_is_migrated_in_place_with_its_rows(db: Connection) -> None:
    _old_layout(db)
    before = postgres.fetch_results(db, TABLE)

    for _ in range(2):  # idempotent: the second ensure finds the new keys and changes nothing
        postgres.ensure_results_table(db, TABLE)
        postgres.ensure_errors_table(db, ERRORS)
        assert _primary_key(db, TABLE) == ("image_id", "model_name", "model_version")
        assert _primary_key(db, ERRORS) == ("uri", "model_name", "model_version")
    after = postgres.fetch_results(db, TABLE)
    # Every row kept as it was, with no source version: current, never rescored for want of one.
    assert [r.pop("source_version") for r in after] == [None, None] and after == before
    assert [e["source_version"] for e in postgres.fetch_errors(db, ERRORS)] == [None]

    postgres.upsert_results(db, TABLE, [_result("a", "places", score=0.9), _result("b", "pets", score=0.3)])
    postgres.upsert_errors(db, ERRORS, [postgres.ErrorRow("/photos/bad.jpg", "1", "places", "c", "corrupt")])
    assert _keys(db) == [("a", "pets", "1"), ("a", "places", "1"), ("b", "pets", "1")]
    rows = {(r["image_id"], r["model_name"]): r for r in postgres.fetch_results(db, TABLE)}
    assert rows["a", "pets"]["score"] == pytest.approx(0.1) and rows["a", "pets"]["attempts"] == 1
    assert rows["b", "pets"]["score"] == pytest.approx(0.3) and rows["b", "pets"]["attempts"] == 2
    assert len(postgres.fetch_errors(db, ERRORS)) == 2


def test_writers_starting_together_migrate_an_old_table_once(db: Connection, pg_database: PgDatabase) -> None:
    """Consumers restarted together after an upgrade: each ensures the tables at once; every one starts,
    and the tables end with the new keys and all their rows."""
    _old_layout(db)
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def writer() -> None:
        conn = postgres.connect(pg_database.dsn)
        try:
            start.wait()
            postgres.ensure_results_table(conn, TABLE)
            postgres.ensure_errors_table(conn, ERRORS)
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert _primary_key(db, TABLE) == ("image_id", "model_name", "model_version")
    assert _primary_key(db, ERRORS) == ("uri", "model_name", "model_version")
    assert len(postgres.fetch_results(db, TABLE)) == 2 and len(postgres.fetch_errors(db, ERRORS)) == 1


def test_a_table_with_a_key_lightbox_did_not_make_is_refused(db: Connection) -> None:
    with db, db.cursor() as cur:
        cur.execute(
            f"CREATE TABLE {TABLE} (image_id text NOT NULL, model_version text NOT NULL, "
            "model_name text NOT NULL, score real, tag_probs jsonb NOT NULL, source_uri text NOT NULL, "
            "scored_at timestamptz NOT NULL DEFAULT now(), attempts integer NOT NULL DEFAULT 1, "
            "PRIMARY KEY (source_uri))"
        )
    with pytest.raises(RuntimeError, match=r"primary key \(source_uri\)"):
        postgres.ensure_results_table(db, TABLE)
    assert _primary_key(db, TABLE) == ("source_uri",)
