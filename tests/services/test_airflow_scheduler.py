"""Airflow for real: a scheduler, a dag-processor and an API server on a PostgreSQL metadata database
with the LocalExecutor. A DAG run is triggered through the public REST API (v2, JWT from the auth
manager's token endpoint) the way a data scientist's tool would, and must complete.

It triggers lightbox_data on a small dataset; its features Asset then schedules lightbox_train, which
tunes, registers and promotes through the (lenient) gates: the whole lifecycle through the real
scheduler path (parsing, queueing, task processes talking to the execution API, XCom, Assets).
Model quality is not the point here; the full checks on the production stores are in
tests/services/test_end_to_end_production.py.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import PgDatabase, start_process, stop_process, wait_http
from lifecycle import LENIENT_GATES, free_port

from lightbox.adapters import airflow_runner, dvc_repo, feast_store, mlflow_registry
from lightbox.settings import Settings

pytestmark = [pytest.mark.slow]

DAG = "lightbox_data"
TRAIN_DAG = "lightbox_train"  # scheduled by lightbox_data's features Asset


@pytest.fixture
def airflow(tmp_path: Path, pg_database: PgDatabase) -> Iterator[tuple[Settings, str, tuple[str, str]]]:
    settings = Settings(
        project_dir=tmp_path / "project", airflow_database_url=pg_database.sqlalchemy_url(), **LENIENT_GATES
    )
    settings.project_dir.mkdir()
    port = free_port()
    user, password = "scientist", secrets.token_urlsafe(12)
    passwords = tmp_path / "airflow-passwords.json"
    passwords.write_text(json.dumps({user: password}))
    env = airflow_runner.service_env(settings, port) | {
        # What the deployment's secret store provides; the same on every component.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__PARALLELISM": "2",
    }
    airflow_runner.ensure_db(settings)  # `airflow db migrate` on PostgreSQL
    exe = str(Path(sys.executable).parent / "airflow")
    logs = settings.state / "logs"
    procs = []
    try:
        # --skip-serve-logs: the log server binds every interface; the API reads the files directly here.
        for name, args in (
            ("api-server", ["api-server", "--workers", "1"]),
            ("scheduler", ["scheduler", "--skip-serve-logs"]),
            ("dag-processor", ["dag-processor"]),
        ):
            procs.append(start_process([exe, *args], logs / f"{name}.log", env=env))
        wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", procs[0], logs / "api-server.log", 180)
        yield settings, f"http://127.0.0.1:{port}", (user, password)
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def test_a_dag_run_triggered_through_the_rest_api_completes(
    airflow: tuple[Settings, str, tuple[str, str]],
) -> None:
    settings, base, (user, password) = airflow
    logs = settings.state / "logs"
    token = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
    assert token.status_code == 201, token.text
    # A generous timeout: the API server answers slowly while a task process imports the ML stack on the
    # same 2 cores (httpx's 5 s default timed out a poll).
    api = httpx.Client(
        base_url=f"{base}/api/v2",
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        timeout=60,
    )
    assert httpx.get(f"{base}/api/v2/dags", timeout=30).status_code == 401  # no token, no API

    # The dag-processor parses dags/ into the database; then the DAG appears, unpaused from creation:
    # a user who triggers lightbox_data in the UI gets lightbox_train without a toggle (README).
    for dag_id in (TRAIN_DAG, DAG):
        deadline = time.monotonic() + 180
        while (r := api.get(f"/dags/{dag_id}")).status_code == 404 and time.monotonic() < deadline:
            time.sleep(1)
        assert r.status_code == 200, (
            f"{r.status_code} {r.text}\n{(logs / 'dag-processor.log').read_text()[-3000:]}"
        )
        assert r.json()["is_paused"] is False

    # A misspelled key (the REST API and the UI's raw conf skip the CLI's check) fails the run at once,
    # before anything is imported: it had run with the default and replaced the data with the demo set.
    typo = api.post(f"/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": {"sorce": "/photos"}})
    assert typo.status_code == 200, typo.text
    typo_id = typo.json()["dag_run_id"]
    deadline = time.monotonic() + 300
    while api.get(f"/dags/{DAG}/dagRuns/{typo_id}").json()["state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, "the misspelled run did not end"
        time.sleep(2)
    ingest = api.get(f"/dags/{DAG}/dagRuns/{typo_id}/taskInstances/ingest").json()
    assert (ingest["state"], ingest["try_number"]) == ("failed", 1)  # no retries for a typo
    assert not (settings.data_dir / "manifest.csv").exists()

    run = api.post(
        f"/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": {"n_sources": 14, "variants": 6}}
    )
    assert run.status_code == 200, run.text
    run_id = run.json()["dag_run_id"]

    deadline = time.monotonic() + 420
    state = "queued"
    while state not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(3)
        state = api.get(f"/dags/{DAG}/dagRuns/{run_id}").json()["state"]
    tasks = api.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    summary = {t["task_id"]: t["state"] for t in tasks}
    assert state == "success", f"{state}: {summary}\n{(logs / 'scheduler.log').read_text()[-3000:]}"
    want = {"ingest": "success", "validate": "success", "version": "success", "features": "success"}
    assert summary == want

    # The tasks ran against this project: data versioned in DVC, features online in Feast.
    version = dvc_repo.load_version(settings)
    assert dvc_repo.remote_holds(settings, version)
    manifest = pd.read_csv(settings.data_dir / "manifest.csv", dtype={"image_id": str})
    assert len(manifest) == version.files - 2 >= 14 * 7  # images + manifest + labels.json; 14 x (1 + 6)
    online = feast_store.online(settings, manifest["image_id"].tolist())
    assert all(e is not None for e in online["embedding"])
    # XCom carries the version between tasks, through the API too.
    xcom = api.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/version/xcomEntries/return_value")
    assert xcom.status_code == 200 and version.md5 in json.dumps(xcom.json())

    # The features Asset event scheduled lightbox_train: it trains, registers and promotes.
    deadline = time.monotonic() + 600
    train_runs: list = []
    while time.monotonic() < deadline:
        train_runs = api.get(f"/dags/{TRAIN_DAG}/dagRuns").json()["dag_runs"]
        if train_runs and train_runs[0]["state"] in ("success", "failed"):
            break
        time.sleep(5)
    assert train_runs, f"no {TRAIN_DAG} run was scheduled by the Asset"
    train = train_runs[0]
    tasks = api.get(f"/dags/{TRAIN_DAG}/dagRuns/{train['dag_run_id']}/taskInstances").json()
    summary = {t["task_id"]: t["state"] for t in tasks["task_instances"]}
    assert train["state"] == "success", f"{train['state']}: {summary}"
    assert train["run_type"] == "asset_triggered"
    champion = mlflow_registry.version_by_alias(settings, settings.champion_alias)
    assert champion.tags["data.md5"] == version.md5
