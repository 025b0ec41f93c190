"""MLflow state a killed process leaves behind: runs still RUNNING, logged models still PENDING, registered
versions nobody gated. Reads it as plain records for pipelines.doctor to judge, and marks it.

Kept apart from mlflow_registry (model logging, loading, aliases): this is bookkeeping about runs, not
models. Every read is of the configured experiment and registered model only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightbox.adapters import mlflow_registry
from lightbox.owner import Owner, this_host
from lightbox.settings import Settings

PID_TAG = "lightbox.pid"
HOST_TAG = "lightbox.host"
STAGE_TAG = "lightbox.stage"
# On a run or logged model marked FAILED after its process died; on a version, why it has no verdict.
FAILED_REASON_TAG = "lightbox.failed_reason"
UNGATED_TAG = "lightbox.ungated"
GATE_VERDICT_TAG = "gate.passed"  # written by pipelines.validate_model with every verdict


def owner_tags() -> dict[str, str]:
    """Tags that name the process writing a run, so a later start can tell a dead run from a live one."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: this_host()}


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    owner: Owner
    stage: str | None  # lightbox.stage: train, trial (None: not a lightbox run)
    parent_run_id: str | None


@dataclass(frozen=True)
class LoggedModelRecord:
    model_id: str
    name: str
    run_id: str | None
    created: datetime


@dataclass(frozen=True)
class LockRecord:
    """An alias lock (mlflow_registry.alias_lock), or the tombstone a waiter left when it broke one."""

    name: str
    holder: str  # lock.holder: who, doing what
    owner: Owner  # pid and host None for a lock from before they were recorded
    tombstone: bool
    updated: datetime  # a tombstone's: when its lock was broken
    held: Any = field(compare=False, repr=False)  # the RegisteredModel, for the repair


@dataclass(frozen=True)
class VersionRecord:
    version: str
    run_id: str | None
    created: datetime
    gated: bool  # a verdict was recorded
    marked: bool  # already marked as never gated
    run: RunRecord | None  # None: gated or marked (not read), no source run, or it was deleted


def _when(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, UTC)


def _store_exists(settings: Settings) -> bool:
    """False for an embedded SQLite store not created yet: a check must not create (and migrate) one."""
    uri = settings.tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def _experiment_id(settings: Settings) -> str | None:
    if not _store_exists(settings):
        return None
    exp = mlflow_registry.client(settings).get_experiment_by_name(settings.mlflow_experiment)
    return None if exp is None else exp.experiment_id


def _pages(search: Callable[[str | None], Any]) -> Iterator[Any]:
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def _record(run: Any) -> RunRecord:
    tags = run.data.tags
    pid = tags.get(PID_TAG, "")
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        status=run.info.status,
        owner=Owner(int(pid) if pid.isdigit() else None, tags.get(HOST_TAG), _when(run.info.start_time)),
        stage=tags.get(STAGE_TAG),
        parent_run_id=tags.get("mlflow.parentRunId"),
    )


def running_runs(settings: Settings) -> list[RunRecord]:
    """Every run of the experiment still RUNNING, live or not."""
    exp = _experiment_id(settings)
    if exp is None:
        return []
    c = mlflow_registry.client(settings)
    runs = _pages(
        lambda token: c.search_runs(
            [exp], "attributes.status = 'RUNNING'", max_results=1000, page_token=token
        )
    )
    return [_record(r) for r in runs]


def pending_models(settings: Settings) -> list[LoggedModelRecord]:
    """Logged models still PENDING: their artifacts were being uploaded (or never were)."""
    from mlflow.entities import LoggedModelStatus

    exp = _experiment_id(settings)
    if exp is None:
        return []
    c = mlflow_registry.client(settings)
    # The SQLite store ignores a status filter (MLflow 3.17), so the status is checked here.
    models = _pages(lambda token: c.search_logged_models([exp], max_results=1000, page_token=token))
    return [
        LoggedModelRecord(m.model_id, m.name, m.source_run_id, _when(m.creation_timestamp))
        for m in models
        if m.status == LoggedModelStatus.PENDING
    ]


def get_run(settings: Settings, run_id: str) -> RunRecord | None:
    """The run, or None when it was deleted (any other error propagates)."""
    from mlflow.exceptions import MlflowException

    try:
        return _record(mlflow_registry.client(settings).get_run(run_id))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def versions(settings: Settings) -> list[VersionRecord]:
    """Every version of ``settings.model_name``; the source run is read only for a version with neither
    a verdict nor a mark (one read each), the only ones a check looks further into."""
    if not _store_exists(settings):
        return []
    c = mlflow_registry.client(settings)
    name = settings.model_name.replace("'", "\\'")
    found = _pages(lambda token: c.search_model_versions(f"name = '{name}'", page_token=token))
    records = []
    for v in found:
        tags = v.tags or {}
        gated, marked = GATE_VERDICT_TAG in tags, UNGATED_TAG in tags
        run = get_run(settings, v.run_id) if v.run_id and not (gated or marked) else None
        records.append(
            VersionRecord(str(v.version), v.run_id or None, _when(v.creation_timestamp), gated, marked, run)
        )
    return records


def alias_locks(settings: Settings) -> list[LockRecord]:
    """The alias locks of ``settings.model_name`` and the tombstones of broken ones."""
    if not _store_exists(settings):
        return []
    c = mlflow_registry.client(settings)
    prefix = mlflow_registry.alias_lock_name(settings, "")
    pattern = prefix.replace("'", "\\'")
    found = _pages(lambda token: c.search_registered_models(f"name LIKE '{pattern}%'", page_token=token))
    return [
        LockRecord(
            m.name,
            (m.tags or {}).get(mlflow_registry.LOCK_HOLDER_TAG, "?"),
            mlflow_registry.lock_owner(m),
            mlflow_registry.TOMBSTONE_INFIX in m.name.removeprefix(prefix),
            _when(m.last_updated_timestamp),
            m,
        )
        for m in found
        if m.name.startswith(prefix)  # LIKE reads a _ in the model's name as any character
    ]


def fail_run(settings: Settings, run_id: str, reason: str) -> None:
    """Mark a run whose process is gone FAILED, with the reason as a tag."""
    c = mlflow_registry.client(settings)
    c.set_tag(run_id, FAILED_REASON_TAG, reason)
    c.set_terminated(run_id, status="FAILED")


def fail_logged_model(settings: Settings, model_id: str, reason: str) -> None:
    """Mark a logged model whose upload never finished FAILED, with the reason as a tag."""
    c = mlflow_registry.client(settings)
    c.set_logged_model_tags(model_id, {FAILED_REASON_TAG: reason})
    c.finalize_logged_model(model_id, "FAILED")


def mark_ungated(settings: Settings, version: str, reason: str) -> None:
    """Say on a version why it has no gate verdict (and how to get one)."""
    mlflow_registry.set_version_tags(settings, version, {UNGATED_TAG: reason})


# --- fine-tune trials (training/finetune_search.py): each trial logs its own nested run, live --------


def start_trial_run(settings: Settings, parent_run_id: str, name: str, tags: dict[str, str]) -> str:
    """Create a run nested under ``parent_run_id`` and make it the active run of this (trial) process,
    with system metrics (CPU, memory, and GPU where pynvml sees one) sampled every few seconds. Returns
    its id; ``mlflow.end_run()`` ends it."""
    import mlflow

    mlflow_registry.configure(settings)
    c = mlflow_registry.client(settings)
    parent = c.get_run(parent_run_id)
    run = c.create_run(
        parent.info.experiment_id,
        tags=tags | {"mlflow.parentRunId": parent_run_id, "mlflow.runName": name},
        run_name=name,
    )
    # Short trials end before the default 10 s sample: sample every 2 s, log every sample.
    mlflow.set_system_metrics_sampling_interval(2)
    mlflow.set_system_metrics_samples_before_logging(1)
    mlflow.start_run(run_id=run.info.run_id, log_system_metrics=True)
    return run.info.run_id


def end_open_children(settings: Settings, parent_run_id: str, why: str) -> list[str]:
    """End the nested runs of ``parent_run_id`` still RUNNING (trials ASHA stopped: their process was
    ended mid-epoch) as FINISHED, saying why; returns their ids."""
    c = mlflow_registry.client(settings)
    parent = c.get_run(parent_run_id)
    runs = c.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for r in runs:
        c.set_tag(r.info.run_id, "lightbox.ended", why)
        c.set_terminated(r.info.run_id, status="FINISHED")
    return [r.info.run_id for r in runs]
