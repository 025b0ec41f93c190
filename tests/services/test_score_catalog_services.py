"""Bulk scoring from an s3:// prefix (moto's server) into PostgreSQL's results table, the one the upload
consumer writes: scores upserted per (image, model name, version), failures in <table>_errors, a rerun
adds nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PgDatabase, S3Server, unique
from photo_samples import jpeg, photo
from registry_samples import register_champion

from lightbox.adapters import postgres
from lightbox.feature_schema import EMBEDDING_DIM
from lightbox.photos import content_id
from lightbox.settings import Settings
from pipelines import score_catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    previous = mlflow.get_tracking_uri()
    register_champion(Settings(project_dir=root))
    yield root
    mlflow.set_tracking_uri(previous)


def test_an_s3_catalog_scores_into_the_results_table(
    registry_dir: Path, s3_server: S3Server, bucket: str, pg_database: PgDatabase
) -> None:
    client = s3_server.client()
    ids = {}
    for i in range(8):
        body = jpeg(photo(700 + i))
        client.put_object(Bucket=bucket, Key=f"shoot/{i}.jpg", Body=body)
        ids[f"s3://{bucket}/shoot/{i}.jpg"] = content_id(body)
    client.put_object(Bucket=bucket, Key="shoot/broken.jpg", Body=b"not a jpeg")
    client.put_object(Bucket=bucket, Key="shoot/sidecar.json", Body=b"{}")  # no image: not listed
    settings = Settings(
        project_dir=registry_dir,
        s3_endpoint_url=s3_server.endpoint_url,
        results_dsn=pg_database.dsn,
        ray_num_cpus=2,
        score_batch_size=4,
        score_part_rows=3,
    )

    result = score_catalog.run(settings, f"s3://{bucket}/shoot", "postgres")
    assert (result.listed, result.scored, result.failed, result.skipped) == (9, 8, 1, 0)

    db = postgres.connect(pg_database.dsn)
    try:
        rows = postgres.fetch_results(db, settings.results_table)
        assert {(r["image_id"], r["source_uri"]) for r in rows} == {(v, k) for k, v in ids.items()}
        assert all(r["model_version"] == "1" and r["attempts"] == 1 for r in rows)
        assert all(r["score"] is not None and len(r["tag_probs"]) > 0 for r in rows)
        errors = postgres.fetch_errors(db, f"{settings.results_table}_errors")
        assert [e["uri"] for e in errors] == [f"s3://{bucket}/shoot/broken.jpg"]
        assert errors[0]["image_id"] and "not a decodable image" in errors[0]["error"]

        again = score_catalog.run(settings, f"s3://{bucket}/shoot", "postgres")
        assert (again.scored, again.failed, again.skipped, again.retried) == (0, 1, 8, 1)  # broken.jpg
        assert len(postgres.fetch_results(db, settings.results_table)) == 8
        assert all(r["attempts"] == 1 for r in postgres.fetch_results(db, settings.results_table))
        assert len(postgres.fetch_errors(db, f"{settings.results_table}_errors")) == 1
    finally:
        db.close()


def test_a_rerun_retries_failures_and_their_scores_replace_the_error_rows(
    registry_dir: Path, s3_server: S3Server, bucket: str, pg_database: PgDatabase, tmp_path: Path
) -> None:
    """A missing object uploaded and a broken one replaced: the rerun scores both (keyed by their
    content hash) and deletes their error rows (keyed by URI); the one still broken keeps one error row."""
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="retry/good.jpg", Body=jpeg(photo(800)))
    client.put_object(Bucket=bucket, Key="retry/broken.jpg", Body=b"not a jpeg")
    client.put_object(Bucket=bucket, Key="retry/bad.jpg", Body=b"not a jpeg either")
    uris = {n: f"s3://{bucket}/retry/{n}.jpg" for n in ("good", "broken", "late", "bad")}
    listing = tmp_path / "catalog.txt"
    listing.write_text("".join(f"{u}\n" for u in uris.values()))  # late.jpg is not uploaded yet
    settings = Settings(
        project_dir=registry_dir,
        s3_endpoint_url=s3_server.endpoint_url,
        results_dsn=pg_database.dsn,
        results_table="retry_scores",
        ray_num_cpus=2,
        score_batch_size=4,
    )
    errors_table = "retry_scores_errors"

    first = score_catalog.run(settings, str(listing), "postgres")
    assert (first.scored, first.failed) == (1, 3)

    db = postgres.connect(pg_database.dsn)
    try:
        before = {e["uri"]: e for e in postgres.fetch_errors(db, errors_table)}
        assert before[uris["late"]]["image_id"] is None and before[uris["broken"]]["image_id"]
        late, fixed = jpeg(photo(801)), jpeg(photo(802))
        client.put_object(Bucket=bucket, Key="retry/late.jpg", Body=late)
        client.put_object(Bucket=bucket, Key="retry/broken.jpg", Body=fixed)

        again = score_catalog.run(settings, str(listing), "postgres")
        assert (again.scored, again.failed, again.skipped, again.retried) == (2, 1, 1, 3)
        rows = postgres.fetch_results(db, settings.results_table)
        assert sorted((r["source_uri"], r["image_id"]) for r in rows) == sorted(
            [
                (uris["good"], content_id(jpeg(photo(800)))),
                (uris["broken"], content_id(fixed)),
                (uris["late"], content_id(late)),
            ]
        )
        errors = postgres.fetch_errors(db, errors_table)
        assert [e["uri"] for e in errors] == [uris["bad"]]  # one row, the newer failure's
        assert errors[0]["failed_at"] > before[uris["bad"]]["failed_at"]
    finally:
        db.close()


def test_an_object_overwritten_in_s3_is_rescored_and_its_new_row_replaces_the_old(
    registry_dir: Path, s3_server: S3Server, bucket: str, pg_database: PgDatabase
) -> None:
    """The listing's size and ETag tell an overwritten object: its new score replaces the old content's
    row in the transaction that writes it; the others are skipped unread."""
    client = s3_server.client()
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"edit/{i}.jpg", Body=jpeg(photo(850 + i)))
    settings = Settings(
        project_dir=registry_dir,
        s3_endpoint_url=s3_server.endpoint_url,
        results_dsn=pg_database.dsn,
        results_table="edit_scores",
        ray_num_cpus=2,
        score_batch_size=4,
    )
    first = score_catalog.run(settings, f"s3://{bucket}/edit", "postgres")
    assert first.scored == 3

    retouched = jpeg(photo(860))
    client.put_object(Bucket=bucket, Key="edit/1.jpg", Body=retouched)
    again = score_catalog.run(settings, f"s3://{bucket}/edit", "postgres")
    assert (again.scored, again.skipped, again.changed) == (1, 2, 1)

    db = postgres.connect(pg_database.dsn)
    try:
        rows = postgres.fetch_results(db, settings.results_table)
        by_uri = {r["source_uri"]: r for r in rows}
        assert len(rows) == 3 and by_uri[f"s3://{bucket}/edit/1.jpg"]["image_id"] == content_id(retouched)
        assert content_id(jpeg(photo(851))) not in {r["image_id"] for r in rows}
        assert all(r["source_version"] for r in rows)
    finally:
        db.close()
    third = score_catalog.run(settings, f"s3://{bucket}/edit", "postgres")
    assert (third.scored, third.skipped, third.changed) == (0, 3, 0)


def test_online_scores_are_read_back_from_redis(registry_dir: Path, redis_addr: str, tmp_path: Path) -> None:
    """--online on the production online store: the rows a search service reads by (image id, model name,
    version)
    live in Redis under this run's Feast project, and are the job's."""
    import redis

    from lightbox.adapters import feast_store
    from lightbox.results import read_parts

    pics = tmp_path / "pics"
    pics.mkdir()
    ids = []
    for i in range(3):
        body = jpeg(photo(900 + i))
        (pics / f"{i}.jpg").write_bytes(body)
        ids.append(content_id(body))
    settings = Settings(
        project_dir=registry_dir,
        ray_num_cpus=2,
        score_batch_size=4,
        score_online=True,
        feast_project=unique(),
        feast_online_store="redis",
        feast_redis=redis_addr,
        feast_registry=str(tmp_path / "feast" / "registry.db"),
        feast_offline_dir=str(tmp_path / "feast" / "offline"),
    )
    try:
        result = score_catalog.run(settings, str(pics), str(tmp_path / "scores"))
        assert (result.scored, result.online) == (3, 3)
        table = read_parts(tmp_path / "scores")
        assert table is not None
        written = {r["image_id"]: r["score"] for r in table.to_pylist()}

        online = feast_store.online_scores(settings, [(i, settings.model_name, "1") for i in ids])
        assert online["score"] == pytest.approx([written[i] for i in ids], abs=1e-6)
        assert all(len(e) == EMBEDDING_DIM for e in online["embedding"])
        host, port = redis_addr.split(":")
        keys = list(redis.Redis(host=host, port=int(port)).scan_iter(f"*{settings.feast_project}"))
        assert len(keys) == 3

        # Another registered model's version 1 (as `places` v1's job or consumer publishes it): its own
        # rows, beside this model's, never over them.
        other = [(i, "places", "1") for i in ids]
        frame = pd.DataFrame(
            {
                "image_id": ids,
                "model_version": "1",
                "event_timestamp": pd.Series([pd.Timestamp.now(tz="UTC")] * 3, dtype="datetime64[us, UTC]"),
                "score": pd.Series([0.125] * 3, dtype="float32"),
                "tag_probs": [{"t": 0.5}] * 3,
                "embedding": [np.zeros(EMBEDDING_DIM, np.float32)] * 3,
                "model_name": "places",
            }
        )
        feast_store.write_scores(settings, feast_store.open_store(settings), frame, "part-places-000000")
        both = feast_store.online_scores(settings, [(i, settings.model_name, "1") for i in ids] + other)
        assert both["score"] == pytest.approx([written[i] for i in ids] + [0.125] * 3, abs=1e-6)
        assert both["model_name"] == [settings.model_name] * 3 + ["places"] * 3
    finally:
        feast_store.teardown(settings)
