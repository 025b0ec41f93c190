"""The production profile: the same end-to-end lifecycle and the same checks as
tests/integration/test_end_to_end.py, switched by settings alone to

- an MLflow tracking server with the basic-auth app, PostgreSQL backend store and S3 artifacts (proxied:
  clients never hold S3 credentials), used by a non-admin user whose password only the environment has;
- Airflow's metadata database on PostgreSQL;
- Feast's SQL registry on PostgreSQL and its Redis online store;
- the DVC remote on S3 (moto's server through an endpoint URL).

Every database, bucket, Feast project and user is created here under a random name and removed after.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import (
    REDIS_ADDR,
    S3_ENV,
    PgDatabase,
    S3Server,
    create_database,
    drop_database,
    require,
    start_process,
    stop_process,
    unique,
    wait_http,
)
from lifecycle import LENIENT_GATES, LifecycleChecks, free_port, run_lifecycle

from lightbox.adapters import feast_store
from lightbox.settings import CODE_ROOT, Settings

pytestmark = [pytest.mark.slow]


def _auth_config(path: Path, database_uri: str) -> Path:
    """The repo's mlflow/basic_auth.ini with this run's user store; no secret is in either file."""
    text = (CODE_ROOT / "mlflow" / "basic_auth.ini").read_text()
    path.write_text(text.replace("sqlite:///basic_auth.db", database_uri))
    return path


def _mlflow_server(tmp: Path, backend: PgDatabase, auth_db: PgDatabase, artifacts: str, s3: S3Server):
    port = free_port()
    admin_password = secrets.token_urlsafe(16)
    env = dict(os.environ) | S3_ENV
    env |= {
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,  # the server, not the client, talks to S3
        "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(tmp / "basic_auth.ini", auth_db.dsn)),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend.dsn,
        "--artifacts-destination",
        artifacts,
    ]
    log = tmp / "mlflow-server.log"
    proc = start_process(cmd, log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, log, timeout=180)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url, ("admin", admin_password)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Settings]:
    host, port = REDIS_ADDR.rsplit(":", 1)
    require("Redis", host, int(port))
    tmp = tmp_path_factory.mktemp("production")
    databases = {k: create_database() for k in ("mlflow", "auth", "airflow", "feast")}
    bucket = unique("lb-test").replace("_", "-")
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    server = None
    settings = None
    with pytest.MonkeyPatch.context() as mp:
        for k, v in S3_ENV.items():
            mp.setenv(k, v)
        try:
            server, url, (admin, admin_password) = _mlflow_server(
                tmp, databases["mlflow"], databases["auth"], f"s3://{bucket}/mlartifacts", s3_server
            )
            # A service account, not the admin: what a team gives its pipelines.
            user, password = "lightbox-pipeline", secrets.token_urlsafe(16)
            r = httpx.post(
                f"{url}/api/2.0/mlflow/users/create",
                json={"username": user, "password": password},
                auth=(admin, admin_password),
                timeout=30,
            )
            assert r.status_code == 200, r.text
            # Credentials travel in MLflow's own environment variables, inherited by Airflow's task
            # processes and the model server; they are not settings and never reach the repo.
            mp.setenv("MLFLOW_TRACKING_USERNAME", user)
            mp.setenv("MLFLOW_TRACKING_PASSWORD", password)
            settings = Settings(
                project_dir=tmp / "project",
                serve_port=free_port(),
                mlflow_tracking_uri=url,
                airflow_database_url=databases["airflow"].sqlalchemy_url(),
                feast_registry=databases["feast"].sqlalchemy_url(),
                feast_online_store="redis",
                feast_redis=REDIS_ADDR,
                feast_project=unique(),
                dvc_remote_url=f"s3://{bucket}/dvc",
                s3_endpoint_url=s3_server.endpoint_url,
                **LENIENT_GATES,  # type: ignore[arg-type]
            )
            settings.project_dir.mkdir()
            yield run_lifecycle(settings)
        finally:
            if settings is not None:
                feast_store.teardown(settings)
            if server is not None:
                stop_process(server)
            for db in databases.values():
                drop_database(db)
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=obj["Key"])
            s3.delete_bucket(Bucket=bucket)


class TestProductionProfile(LifecycleChecks):
    def test_the_stores_are_the_servers(self, project: Settings, s3_server: S3Server) -> None:
        """Guard against a silent fallback to the embedded stores."""
        assert not (project.state / "mlflow.db").exists()
        assert not (project.state / "dvc-remote").exists()
        assert not (project.airflow_home_path / "airflow.db").exists()
        assert not (project.state / "feast" / "online.db").exists()
        bucket = project.dvc_remote.removeprefix("s3://").split("/", 1)[0]
        keys = [
            o["Key"]
            for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        ]
        assert any(k.startswith("dvc/files/md5/") for k in keys)
        assert any(k.startswith("mlartifacts/") and "/plots/" in k for k in keys)

    def test_mlflow_refuses_requests_without_credentials(self, project: Settings) -> None:
        url = f"{project.tracking_uri}/api/2.0/mlflow/experiments/search"
        assert httpx.post(url, json={"max_results": 1}, timeout=10).status_code == 401
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], "wrong")
        assert httpx.post(url, json={"max_results": 1}, auth=auth, timeout=10).status_code == 401
