"""Stage: what killed runs left behind, and its repair (`lightbox doctor`, `lightbox doctor --repair`).

A SIGKILL (the OOM killer, a cancelled CI job, `kill -9`) runs no cleanup, so each stage repairs what a
killed predecessor left on its next start: the import removes half-built folders, `dags test` fails the
runs left `running`, training fails orphaned MLflow runs. This module finds all of it at once:

- build folders (``.data.building-*``, ``.golden.building-*``) whose building process is gone;
- `airflow dags test` runs left `running` in the Airflow database;
- MLflow runs left RUNNING by a process that is gone (``lightbox.pid``/``lightbox.host`` tags, recorded
  at start; without them, only age tells), logged models left PENDING (their upload never finished);
- registered versions that will never be gated: their training run did not finish (killed, failed,
  interrupted). Marked (tag ``lightbox.ungated``), not gated here: the gates need the golden set and
  minutes, and a promotion gates a version anyway;
- an alias lock (``mlflow_registry.alias_lock``, a registered model ``<model>.alias-lock.<alias>``) whose
  holder is gone or that is past its lease: every promotion and rollback would wait on it; and the
  tombstone of a broken lock that a killed waiter left (``...alias-lock.<alias>.stale-<ms>``).

A version whose training run finished but that has no verdict yet is no leftover: `lightbox train`
then `lightbox gates` is the documented per-stage workflow, and several trainings may come before the
gates. ``notes`` lists those (exit 0), with the command that gates them.

The judgements (``orphaned_runs``, ``abandoned_models``, ``ungated_versions``, ``not_gated_yet``,
``stale_locks``, ``stale_builds``) are pure over the adapters' records; ``check`` gathers them as
Problems, each carrying its repair.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from lightbox.adapters import airflow_runner, mlflow_registry, mlflow_runs
from lightbox.adapters.mlflow_runs import LockRecord, LoggedModelRecord, RunRecord, VersionRecord
from lightbox.owner import Owner, gone, process_alive
from lightbox.settings import Settings
from pipelines.importer import stale_builds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    kind: str  # build folder, Airflow run, MLflow run, logged model, model version
    what: str
    why: str
    fix: str  # what the repair does, in words
    repair: Callable[[], None] = field(compare=False, repr=False)

    def describe(self) -> str:
        return f"{self.kind} {self.what}: {self.why}\n    repair: {self.fix}"


# --- judgements (pure) -----------------------------------------------------------------------------------


def orphaned_runs(
    runs: Sequence[RunRecord], *, now: datetime | None = None, alive: Callable[[int], bool] = process_alive
) -> dict[str, str]:
    """run_id -> why, for RUNNING runs whose process is gone (or, with none recorded, that are older than
    any stage runs)."""
    found = {}
    for run in runs:
        why = gone(run.owner, now=now, alive=alive)
        if run.status == "RUNNING" and why is not None:
            found[run.run_id] = f"left RUNNING: {why}"
    return found


def abandoned_models(
    models: Sequence[LoggedModelRecord],
    runs: Mapping[str, RunRecord | None],
    orphans: Mapping[str, str],
    *,
    now: datetime | None = None,
) -> dict[str, str]:
    """model_id -> why, for PENDING logged models nobody will finish uploading: their run is orphaned or
    has ended (``runs``: their source runs by id; None when deleted)."""
    found = {}
    for m in models:
        run = runs.get(m.run_id) if m.run_id else None
        if m.run_id is not None and m.run_id in orphans:
            found[m.model_id] = f"left PENDING with its run {m.run_id}, {orphans[m.run_id]}"
        elif run is not None and run.status != "RUNNING":
            found[m.model_id] = f"left PENDING: its run {run.run_id} ended {run.status} before the upload did"
        elif run is None and (why := gone(Owner(None, None, m.created), now=now)) is not None:
            found[m.model_id] = f"left PENDING with no run: {why}"
    return found


def _awaits_verdict(v: VersionRecord) -> bool:
    """No verdict, not marked, and made by lightbox's training (or its int8 step): the versions the
    judgements below look into."""
    return not (v.gated or v.marked) and v.run is not None and v.run.stage in ("train", "quantize")


def ungated_versions(versions: Sequence[VersionRecord], orphans: Mapping[str, str]) -> dict[str, str]:
    """version -> why, for versions lightbox trained that have no gate verdict and whose training run
    did not finish: killed (orphaned), failed or interrupted. Their run never reached its gates."""
    found = {}
    for v in versions:
        if not _awaits_verdict(v) or v.run is None:
            continue
        if v.run.run_id in orphans:
            found[v.version] = f"its training run {v.run.run_id} was {orphans[v.run.run_id]}"
        elif v.run.status in ("FAILED", "KILLED"):
            found[v.version] = f"its training run {v.run.run_id} ended {v.run.status}"
    return found


def not_gated_yet(versions: Sequence[VersionRecord]) -> list[str]:
    """Versions, oldest first, whose training run finished and that have no verdict yet: the per-stage
    workflow's normal state between `lightbox train` and `lightbox gates`, not a killed run's leftover."""
    waiting = [v for v in versions if _awaits_verdict(v) and v.run is not None and v.run.status == "FINISHED"]
    return [v.version for v in sorted(waiting, key=lambda v: int(v.version))]


def stale_locks(
    locks: Sequence[LockRecord],
    *,
    now: datetime | None = None,
    alive: Callable[[int], bool] = process_alive,
    lease_s: float = mlflow_registry.ALIAS_LOCK_LEASE_S,
) -> dict[str, str]:
    """name -> why, for alias locks whose holder is gone on this host or that are past their lease (what
    a waiter breaks), and tombstones of broken locks older than a lease (their breaker has left: a
    live one deletes its own when it releases)."""
    now = now or datetime.now(UTC)
    lease = timedelta(seconds=lease_s)
    found = {}
    for lock in locks:
        if lock.tombstone:
            if now - lock.updated > lease:
                found[lock.name] = f"the tombstone of a lock broken at {lock.updated:%Y-%m-%d %H:%M:%S} UTC"
        elif (why := gone(lock.owner, now=now, alive=alive)) is not None:
            found[lock.name] = f"held by {lock.holder}: {why}"
        elif now - lock.owner.started > lease:
            age = (now - lock.owner.started).total_seconds()
            found[lock.name] = f"held by {lock.holder} for {age:.0f} s, past its {lease_s:.0f} s lease"
    return found


# --- problems and their repairs ------------------------------------------------------------------------


def build_problems(settings: Settings) -> list[Problem]:
    return [
        Problem("build folder", str(folder), why, "remove it", partial(shutil.rmtree, folder))
        for target in (settings.data_dir, settings.golden_dir)
        for folder, why in stale_builds(target)
    ]


def airflow_problems(settings: Settings) -> list[Problem]:
    return [
        Problem(
            "Airflow run",
            f"{run.dag_id} {run.run_id}",
            why,
            "mark it failed (the reason as its note)",
            partial(airflow_runner.fail_test_runs, settings, [(run, why)]),
        )
        for run, why in airflow_runner.orphaned_test_runs(settings)
    ]


def mlflow_problems(settings: Settings) -> list[Problem]:
    running = mlflow_runs.running_runs(settings)
    orphans = orphaned_runs(running)
    problems = [
        Problem(
            "MLflow run",
            f"{run.run_id} ({run.name})",
            orphans[run.run_id],
            "mark it FAILED (the reason as tag lightbox.failed_reason)",
            partial(mlflow_runs.fail_run, settings, run.run_id, orphans[run.run_id]),
        )
        for run in running
        if run.run_id in orphans
    ]
    models = mlflow_runs.pending_models(settings)
    by_id: dict[str, RunRecord | None] = {r.run_id: r for r in running}
    for m in models:
        if m.run_id and m.run_id not in by_id:
            by_id[m.run_id] = mlflow_runs.get_run(settings, m.run_id)
    for model_id, why in abandoned_models(models, by_id, orphans).items():
        problems.append(
            Problem(
                "logged model",
                model_id,
                why,
                "mark it FAILED (the reason as tag lightbox.failed_reason)",
                partial(mlflow_runs.fail_logged_model, settings, model_id, why),
            )
        )
    for version, why in ungated_versions(mlflow_runs.versions(settings), orphans).items():
        note = f"{why}; judge it with `lightbox gates --version {version}`"
        problems.append(
            Problem(
                "model version",
                f"{settings.model_name} v{version}",
                f"never gated: {why}",
                "tag it lightbox.ungated with why (a promotion still gates it first)",
                partial(mlflow_runs.mark_ungated, settings, version, note),
            )
        )
    return problems


def lock_problems(settings: Settings) -> list[Problem]:
    locks = {lock.name: lock for lock in mlflow_runs.alias_locks(settings)}
    problems = []
    for name, why in stale_locks(list(locks.values())).items():
        lock = locks[name]
        if lock.tombstone:
            fix, repair = "delete it", partial(mlflow_registry.delete_tombstone, settings, name)
        else:
            why += ": every promotion and rollback of this alias waits for it"
            fix = "break it, as a waiter would, and delete it"
            repair = partial(mlflow_registry.break_lock, settings, lock.held)
        problems.append(Problem("alias lock", name, why, fix, repair))
    return problems


def feature_problems(settings: Settings) -> list[Problem]:
    from lightbox.adapters import feast_store

    behind = feast_store.online_behind(settings)
    if behind is None:
        return []
    why = (
        f"has not received the offline features of {behind} images in full (a `lightbox features` run "
        "stopped before materializing, or the store was emptied or switched): a read by image id misses them"
    )
    fix = "materialize the offline features into it"
    store = settings.feast_online_store
    return [
        Problem("Feast online store", store, why, fix, partial(feast_store.materialize_offline, settings))
    ]


def notes(settings: Settings) -> list[str]:
    """What is worth knowing but left behind by nobody: versions that are not gated yet."""
    return [
        f"{settings.model_name} v{v} is not gated yet: run `lightbox gates --version {v}`"
        for v in not_gated_yet(mlflow_runs.versions(settings))
    ]


def check(settings: Settings) -> list[Problem]:
    """Everything killed runs left behind in this project, each with its repair."""
    return [
        *build_problems(settings),
        *airflow_problems(settings),
        *mlflow_problems(settings),
        *lock_problems(settings),
        *feature_problems(settings),
    ]


def repair(problems: Sequence[Problem]) -> None:
    for p in problems:
        p.repair()


def recover_training(settings: Settings) -> list[Problem]:
    """What training runs first: fail the MLflow runs and models a killed training left behind, mark the
    versions it left ungated. Returns what it repaired (also logged)."""
    problems = mlflow_problems(settings)
    repair(problems)
    for p in problems:
        log.warning("repaired %s %s: %s", p.kind, p.what, p.why)
    return problems


@contextmanager
def settled_if_interrupted(settings: Settings) -> Iterator[None]:
    """Ctrl-C in the block (training's MLflow logging, entered outside its run's ``with`` so the run has
    ended when this runs): settle at once what the next training would, the model left PENDING
    mid-upload and a version registered without its gates, so that the CLI's "nothing half-done is
    kept" holds and `lightbox doctor` lists nothing."""
    try:
        yield
    except KeyboardInterrupt:
        recover_training(settings)
        raise
