"""Runs that are killed: each stage settles what a killed predecessor left, and `lightbox doctor` lists
and repairs it. Every kill here is a real SIGKILL of a real process (no cleanup runs), on real Airflow
and MLflow stores (SQLite)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from mlflow.entities import LoggedModelStatus
from photo_samples import imagefolder
from typer.testing import CliRunner

from lightbox.adapters import airflow_runner, mlflow_registry, mlflow_runs
from lightbox.adapters.dvc_repo import NoDatasetVersion
from lightbox.cli import app
from lightbox.settings import Settings, settings_env
from pipelines import doctor, features, importer, train, version_data
from pipelines.importer import ImportOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LIGHTBOX = str(Path(sys.executable).parent / "lightbox")

# What a training process has done when it is killed mid-log_model: its run RUNNING (with its pid), a
# logged model PENDING, a version registered that its gates will never see.
KILLED_TRAINING = """
import json, os, signal
import mlflow
from mlflow.exceptions import MlflowException
from lightbox.adapters import mlflow_registry, mlflow_runs
from lightbox.settings import load_settings

s = load_settings()
mlflow_registry.configure(s)
run = mlflow.start_run(run_name="tune-killed", tags={"lightbox.stage": "train"} | mlflow_runs.owner_tags())
model = mlflow.initialize_logged_model(name="model")
c = mlflow_registry.client(s)
try:
    c.create_registered_model(s.model_name)
except MlflowException as exc:
    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
        raise
source = f"models:/{model.model_id}"
v = c.create_model_version(s.model_name, source, run.info.run_id, model_id=model.model_id)
print(json.dumps({"run": run.info.run_id, "model": model.model_id, "version": str(v.version)}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def kill_a_training(settings: Settings) -> dict[str, str]:
    env = os.environ | settings_env(settings)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_TRAINING], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def doctor_cli(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", *args], env=settings_env(settings))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(project_dir=tmp_path_factory.mktemp("recovery"), golden_fraction=0.0, min_tag_count=2)


def test_training_refuses_features_of_an_earlier_data_version(project: Settings, tmp_path: Path) -> None:
    """Killed after `version`, before `features`: data.dvc is at the new version, Feast holds the old
    one's features. Training must refuse, naming what to run, rather than train on stale features."""
    s = project.model_copy(update={"project_dir": tmp_path / "data-project"})
    opts = ImportOptions(score_column="rating", tags_column="labels", score_range="1,10")
    # The lightbox_data tasks in order (validation left out: every photo here is good, it changes nothing).
    importer.run(s, str(imagefolder(tmp_path / "a", 24)), opts)
    version_data.run(s)
    features.run(s)
    assert len(train.load_training_data(s).rows) == 24  # consistent: training reads every image

    importer.run(s, str(imagefolder(tmp_path / "b", 24, start=100)), opts)  # another batch...
    version_data.run(s)  # ...versioned, and then the process was killed before `features`
    with pytest.raises(features.FeaturesOutOfDate, match=r"24 have no features.*run `lightbox features`"):
        train.load_training_data(s)
    features.run(s)

    # data/ edited by hand after `data version` (every score set to 10): the run would record the
    # version's md5 as its data, trained on other labels. Refused before any trial, saying what to run.
    table = s.data_dir / "manifest.csv"
    lines = table.read_text().splitlines()
    col = lines[0].split(",").index("score")
    edited = [lines[0]] + [",".join((*r.split(",")[:col], "10", *r.split(",")[col + 1 :])) for r in lines[1:]]
    table.write_text("\n".join(edited) + "\n")
    with pytest.raises(
        NoDatasetVersion, match=r"data changed since it was versioned as .*lightbox data version"
    ):
        train.run(s, trials=1, epochs=1)


def test_a_killed_dags_test_keeps_its_log_and_its_run_is_failed(tmp_path: Path) -> None:
    """`lightbox dags test` killed mid-task (process group, SIGKILL): the log holds every line up to the
    kill, the run left `running` is listed by `lightbox doctor`, and the next start marks it failed."""
    project = Settings(project_dir=tmp_path)  # an Airflow home of its own: the others need none
    env = os.environ | settings_env(project)
    conf = json.dumps({"n_sources": 3, "variants": 1})
    proc = subprocess.Popen(
        [LIGHTBOX, "dags", "test", "lightbox_data", "--conf", conf],
        env=env,
        cwd=project.project_dir,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = project.state / "logs" / "lightbox_data.log"
    try:
        deadline = time.monotonic() + 300
        while not (latest.exists() and "[DAG TEST] starting task_id=ingest" in latest.read_text()):
            assert proc.poll() is None, "dags test ended before its first task started"
            assert time.monotonic() < deadline, "the first task's start never reached the log"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The line was on disk while the task ran (a buffered log lost it), in this run's own file.
    assert latest.is_symlink() and latest.resolve().name.startswith("lightbox_data-2")

    code, out = doctor_cli(project)
    assert code == 1 and "Airflow run lightbox_data manual__" in out, out
    assert "left running by a killed `dags test`: its process" in out
    assert "repair with `lightbox doctor --repair`" in out

    # What dags_test runs first: the orphan is failed (the reason as its note), the runner forgotten.
    found = airflow_runner.recover_test_runs(project)
    assert [r.dag_id for r, _ in found] == ["lightbox_data"] and found[0][0].run_id in out
    with closing(sqlite3.connect(project.airflow_home_path / "airflow.db")) as db:
        state, note = db.execute(
            "SELECT state, content FROM dag_run JOIN dag_run_note ON dag_run_note.dag_run_id = dag_run.id "
            "WHERE run_id = ?",
            (found[0][0].run_id,),
        ).fetchone()
    assert state == "failed" and note == found[0][1]
    assert not list((project.airflow_home_path / "dags-test").glob("*.json"))
    assert doctor_cli(project) == (0, "nothing left behind by killed runs\n")


def test_doctor_lists_and_repairs_what_a_killed_training_left(project: Settings) -> None:
    killed = kill_a_training(project)
    # A run of a live process (this one) is not an orphan, however long it runs.
    c = mlflow_registry.client(project)
    exp = c.get_experiment_by_name(project.mlflow_experiment).experiment_id
    live = c.create_run(exp, tags={"lightbox.stage": "train"} | mlflow_runs.owner_tags()).info.run_id
    try:
        code, out = doctor_cli(project)
        assert code == 1, out
        assert f"MLflow run {killed['run']} (tune-killed): left RUNNING: its process" in out
        assert f"logged model {killed['model']}: left PENDING with its run {killed['run']}" in out
        assert f"model version {project.model_name} v{killed['version']}: never gated" in out
        assert live not in out

        code, out = doctor_cli(project, "--repair")
        assert code == 0 and out.endswith("repaired 3\n"), out
        run = c.get_run(killed["run"])
        assert run.info.status == "FAILED" and "is gone" in run.data.tags[mlflow_runs.FAILED_REASON_TAG]
        assert c.get_logged_model(killed["model"]).status == LoggedModelStatus.FAILED
        tags = c.get_model_version(project.model_name, killed["version"]).tags
        assert (
            f"judge it with `lightbox gates --version {killed['version']}`" in tags[mlflow_runs.UNGATED_TAG]
        )
        assert c.get_run(live).info.status == "RUNNING"
        assert doctor_cli(project) == (0, "nothing left behind by killed runs\n")
    finally:
        c.set_terminated(live)


def test_training_settles_a_killed_training_before_it_starts(project: Settings) -> None:
    killed = kill_a_training(project)
    assert {p.kind for p in doctor.check(project)} == {"MLflow run", "logged model", "model version"}
    # This project has no data: training stops there, but only after settling what the kill left.
    with pytest.raises(FileNotFoundError, match="no dataset version yet: import your photos"):
        train.run(project)
    c = mlflow_registry.client(project)
    assert c.get_run(killed["run"]).info.status == "FAILED"
    assert doctor.check(project) == []
