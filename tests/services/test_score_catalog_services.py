"""Bulk scoring from an s3:// prefix (moto's server) into PostgreSQL's results table, the one the upload
consumer writes: scores upserted per (image, version), failures in <table>_errors, a rerun adds nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgDatabase, S3Server
from photo_samples import jpeg, photo
from registry_samples import register_champion

from lightbox.adapters import postgres
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
        assert (again.scored, again.failed, again.skipped) == (0, 0, 9)
        assert len(postgres.fetch_results(db, settings.results_table)) == 8
        assert all(r["attempts"] == 1 for r in postgres.fetch_results(db, settings.results_table))
    finally:
        db.close()
