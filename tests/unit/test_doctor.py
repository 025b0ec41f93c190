"""What a killed run leaves behind, judged without any framework: which build folders, DAG runs, MLflow
runs, logged models and versions are abandoned, and which may still belong to a live process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lightbox.adapters.airflow_runner import DagTestRun, Runner, orphans
from lightbox.adapters.mlflow_runs import LockRecord, LoggedModelRecord, RunRecord, VersionRecord
from lightbox.dataset import TAG_VOCABULARY
from lightbox.manifest import MANIFEST_NAME, LabelSpec
from lightbox.owner import Owner, this_host
from lightbox.settings import Settings
from pipelines import doctor, golden

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
HOST = this_host()
DEAD, LIVE = 101, 202


def alive(pid: int) -> bool:
    return pid == LIVE


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def run(run_id: str, pid: int | None, *, host: str | None = HOST, age_h: float = 1, status: str = "RUNNING"):
    return RunRecord(run_id, run_id, status, Owner(pid, host, NOW - timedelta(hours=age_h)), "train", None)


def test_golden_render_removes_what_a_killed_render_left(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path, golden_sources=1, image_max_side=64)
    s.golden_dir.parent.mkdir(parents=True, exist_ok=True)
    killed = s.golden_dir.parent / f".golden.building-{dead_pid()}-x1"
    unnamed = s.golden_dir.parent / ".golden.building-k2j4"  # how the renderer named them before
    running = s.golden_dir.parent / f".golden.building-{os.getppid()}-x3"  # a live process's build
    for folder in (killed, unnamed, running):
        (folder / "images").mkdir(parents=True)
    assert [f for f, _ in doctor.stale_builds(s.golden_dir)] == [killed, unnamed]

    spec = LabelSpec(dict.fromkeys(TAG_VOCABULARY, 50), score_name="quality", score_range=(0.0, 1.0))
    golden.build(s, spec)
    assert (s.golden_dir / MANIFEST_NAME).is_file()
    assert not killed.exists() and not unnamed.exists() and running.exists()
    leftovers = sorted(p.name for p in s.golden_dir.parent.glob(".golden.building-*"))
    assert leftovers == [running.name]


def test_a_run_is_orphaned_when_its_process_is_gone_or_it_is_older_than_any_stage() -> None:
    runs = [
        run("dead", DEAD),
        run("live", LIVE),
        run("elsewhere", DEAD, host="another-host"),  # cannot be checked from here: only age tells
        run("unowned", None),
        run("old-unowned", None, age_h=49),
        run("ended", DEAD, status="FINISHED"),
    ]
    found = doctor.orphaned_runs(runs, now=NOW, alive=alive)
    assert sorted(found) == ["dead", "old-unowned"]
    assert found["dead"] == f"left RUNNING: its process {DEAD} on {HOST} is gone"


def test_a_pending_model_is_abandoned_when_its_run_is_orphaned_or_ended() -> None:
    created = NOW - timedelta(hours=1)
    models = [
        LoggedModelRecord("m-orphan", "model", "dead", created),
        LoggedModelRecord("m-ended", "model", "ended", created),
        LoggedModelRecord("m-live", "model", "live", created),
        LoggedModelRecord("m-no-run", "model", None, created),
        LoggedModelRecord("m-old", "model", None, NOW - timedelta(days=3)),
    ]
    runs = {
        "dead": run("dead", DEAD),
        "ended": run("ended", DEAD, status="FAILED"),
        "live": run("live", LIVE),
    }
    found = doctor.abandoned_models(models, runs, {"dead": "left RUNNING: gone"}, now=NOW)
    assert sorted(found) == ["m-ended", "m-old", "m-orphan"]
    assert "ended FAILED before the upload did" in found["m-ended"]


def _version(v: str, r: RunRecord | None, *, gated: bool = False, age_h: float = 1) -> VersionRecord:
    return VersionRecord(v, r.run_id if r else None, NOW - timedelta(hours=age_h), gated, False, r)


def test_a_version_is_ungated_when_its_training_run_did_not_finish() -> None:
    versions = [
        _version("1", run("r1", DEAD, status="FINISHED"), gated=True),
        _version("2", None),  # not made by lightbox's training (no run): not ours to judge
        _version("3", run("r3", DEAD, status="FINISHED")),  # finished, gates not run yet: a note
        _version("4", run("r4", DEAD)),  # its run is orphaned
        _version("5", run("r5", DEAD, status="KILLED")),
        _version("6", run("r6", LIVE, status="FINISHED")),
        _version("7", run("r7", LIVE)),  # still training
    ]
    found = doctor.ungated_versions(versions, {"r4": "left RUNNING: gone"})
    assert found == {
        "4": "its training run r4 was left RUNNING: gone",
        "5": "its training run r5 ended KILLED",
    }
    # A killed `lightbox quantize` (or a retried int8 task) leaves its int8 version to the same rules;
    # a version made by another stage is not ours to judge.
    quantize = replace(run("q7", DEAD, status="KILLED"), stage="quantize")
    other = replace(run("o8", DEAD, status="KILLED"), stage="import")
    found = doctor.ungated_versions([_version("7", quantize), _version("8", other)], {})
    assert found == {"7": "its training run q7 ended KILLED"}


def test_versions_of_finished_trainings_are_not_gated_yet_not_left_behind() -> None:
    """`lightbox train` twice, no `lightbox gates` between (the per-stage workflow): nothing was killed,
    so neither version is a leftover, however many came after it or however old it is."""
    versions = [
        _version("1", run("r1", DEAD, status="FINISHED"), gated=True),
        _version("2", run("r2", DEAD, status="FINISHED"), age_h=72),
        _version("3", run("r3", DEAD, status="FINISHED")),
        _version("4", run("r4", DEAD, status="FAILED")),
        _version("10", run("r10", LIVE, status="FINISHED")),
    ]
    assert doctor.ungated_versions(versions, {}) == {"4": "its training run r4 ended FAILED"}
    assert doctor.not_gated_yet(versions) == ["2", "3", "10"]


def lock(name: str, pid: int | None, *, host: str | None = HOST, age_s: float = 5) -> LockRecord:
    created = NOW - timedelta(seconds=age_s)
    return LockRecord(name, f"{name}'s holder", Owner(pid, host, created), ".stale-" in name, created, None)


def test_an_alias_lock_is_stale_when_its_holder_is_gone_or_past_its_lease() -> None:
    """What a killed `lightbox promote` left holding @champion: every promotion would wait on it."""
    locks = [
        lock("m.alias-lock.champion", DEAD),  # killed on this host: broken at once
        lock("m.alias-lock.challenger", LIVE),  # a promotion running now
        lock("m.alias-lock.a", DEAD, host="another-host"),  # cannot be checked from here: the lease
        lock("m.alias-lock.b", None, age_s=61),  # recorded no holder (older lightbox): the lease
        lock("m.alias-lock.c.stale-1", None, age_s=61),  # a tombstone its killed breaker left
        lock("m.alias-lock.d.stale-2", None),  # its breaker may still hold the new lock
    ]
    found = doctor.stale_locks(locks, now=NOW, alive=alive, lease_s=60)
    assert sorted(found) == ["m.alias-lock.b", "m.alias-lock.c.stale-1", "m.alias-lock.champion"]
    assert found["m.alias-lock.champion"] == (
        f"held by m.alias-lock.champion's holder: its process {DEAD} on {HOST} is gone"
    )
    assert "61 s, past its 60 s lease" in found["m.alias-lock.b"]
    assert found["m.alias-lock.c.stale-1"].startswith("the tombstone of a lock broken at")


def test_doctor_exits_0_with_a_note_for_a_version_not_gated_yet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from lightbox.adapters import mlflow_runs
    from lightbox.cli import app

    trained = [
        _version("1", run("r1", DEAD, status="FINISHED")),
        _version("2", run("r2", DEAD, status="FINISHED")),
    ]
    monkeypatch.setattr(mlflow_runs, "versions", lambda settings: trained)
    monkeypatch.setattr(mlflow_runs, "running_runs", lambda settings: [])
    monkeypatch.setattr(mlflow_runs, "pending_models", lambda settings: [])
    monkeypatch.setattr(doctor, "airflow_problems", lambda settings: [])
    result = CliRunner().invoke(app, ["doctor"], env={"LIGHTBOX_PROJECT_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert result.output == (
        "note: lightbox v1 is not gated yet: run `lightbox gates --version 1`\n"
        "note: lightbox v2 is not gated yet: run `lightbox gates --version 2`\n"
        "nothing left behind by killed runs\n"
    )


def test_a_dags_test_run_is_orphaned_when_the_process_that_started_it_is_gone() -> None:
    def test_run(dag: str, minute: int) -> DagTestRun:
        return DagTestRun(dag, f"manual__{minute}", NOW + timedelta(minutes=minute))

    def runner(dag: str, pid: int, minute: int) -> Runner:
        return Runner(Path(f"{pid}.json"), dag, Owner(pid, HOST, NOW + timedelta(minutes=minute)))

    runs = [test_run("data", 1), test_run("train", 11), test_run("promote", 21)]
    # data's runner is dead; train's newest runner before its run is live (an older dead one is not its).
    runners = [runner("data", DEAD, 0), runner("train", DEAD, 5), runner("train", LIVE, 10)]
    found = orphans(runs, runners, now=NOW + timedelta(minutes=30), alive=alive)
    assert [(r.dag_id, why) for r, why in found] == [
        ("data", f"left running by a killed `dags test`: its process {DEAD} on {HOST} is gone")
    ]
    # With no runner recorded (promote: a `dags test` started by hand), only age tells; past the age no
    # stage runs for, a live pid is taken for a reused one.
    later = orphans(runs, runners, now=NOW + timedelta(days=3), alive=alive)
    assert [r.dag_id for r, _ in later] == ["data", "train", "promote"]


def test_an_online_store_that_missed_the_offline_features_is_listed(tmp_path: Path) -> None:
    """A features run killed between its offline write and materializing: doctor names it (the next
    `lightbox features` run also repairs it)."""
    import pandas as pd

    from lightbox.adapters import feast_store

    s = Settings(project_dir=tmp_path)
    assert doctor.feature_problems(s) == []  # no features run yet
    keys = pd.DataFrame({"image_id": ["a", "b"], "event_timestamp": pd.Timestamp("2026-12-07", tz="UTC")})
    feast_store.write_offline(s, keys)
    [problem] = doctor.feature_problems(s)
    assert problem.kind == "Feast online store" and "offline features of 2 images" in problem.why
    Path(s.feast_online_path).parent.mkdir(parents=True, exist_ok=True)
    Path(s.feast_online_path).touch()
    feast_store.record_materialized(s, feast_store.offline_fingerprint(s, feast_store.read_offline(s)))
    assert doctor.feature_problems(s) == []
