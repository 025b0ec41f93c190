"""Run the server: load the alias's model version from the registry, then uvicorn on settings' address."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from lightbox.adapters.mlflow_registry import ArtifactError
from lightbox.settings import Settings
from serving.app import ModelSource, PendingChallenger, create_app
from serving.calibration import BUDGET_SHARE, calibrate
from serving.minions import IsolatedLoader, IsolatedPredictor
from serving.reload import ModelLoader
from serving.runtime import apply_torch_threads, compute_layout, max_batch_size
from training.predictor import ModelNotFound, Predictor, RegistryLoader, RuntimeUnavailable

log = logging.getLogger(__name__)


class CannotServe(RuntimeError):
    """The alias names no servable version (none promoted yet, or files not the ones the gates judged);
    the message names the model and says what to do."""


def run(settings: Settings, alias: str | None = None) -> None:
    """Serve ``models:/{model_name}@{alias}`` (default: the champion), or every ``serve_models`` entry,
    until interrupted.

    One process, one worker: the models and their batchers live in this process, and a second worker
    would hold a second copy of each model while halving each batcher's batches.
    """
    import torch

    specs = settings.served_models
    if alias is not None:
        if settings.serve_models is not None:
            raise CannotServe("give either --alias (one model) or --models NAME@ALIAS,..., not both")
        specs = [(settings.model_name, alias)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Threads first: ONNX Runtime fixes a session's threads when it is made, at load.
    apply_torch_threads(compute_layout(settings, device))
    isolated = set(settings.isolated_models)
    if len(specs) == 1 and specs[0][0] == settings.model_name:
        predictor, loader = _load(settings, specs[0][1], device, settings.model_name in isolated)
        settings = sized_for(settings, predictor)
        log.info("serving %r on http://%s:%d", predictor, settings.serve_host, settings.serve_port)
        extra = _challenger(settings, ModelSource(predictor, loader, settings.model_name, settings), device)
        app = create_app(settings, predictor, loader=loader, **extra)
    else:
        sources = []
        for name, model_alias in specs:
            own = settings.model_copy(update={"model_name": name})
            predictor, loader = _load(own, model_alias, device, name in isolated)
            # Each model its own batch cap (calibrated on its own forward pass).
            sources.append(ModelSource(predictor, loader, name, sized_for(own, predictor)))
            log.info("serving %r as %r", predictor, name)
        log.info("%d models on http://%s:%d", len(sources), settings.serve_host, settings.serve_port)
        app = create_app(settings, sources, **_challenger(settings, sources[0], device))
    uvicorn.run(
        app,
        host=settings.serve_host,
        port=settings.serve_port,
        workers=1,
        log_level="info",
        access_log=False,  # per-request lines cost more than the batching saves; /metrics counts them
        timeout_graceful_shutdown=10,
    )


def _challenger(settings: Settings, primary: ModelSource, device: str) -> dict[str, Any]:
    """With canary or shadow on: the primary's challenger (its challenger_alias) and the recorder of its
    agreement onto its registry version; else nothing."""
    if settings.serve_canary_percent <= 0 and settings.serve_shadow_fraction <= 0:
        return {}
    from lightbox.adapters import mlflow_registry

    own = (primary.settings or settings).model_copy(update={"model_name": primary.name})
    name = f"{primary.name}@{settings.challenger_alias}"

    def record(version: str, tags: dict[str, str]) -> None:
        mlflow_registry.set_version_tags(own, version, tags)

    try:
        predictor, loader = _load(own, settings.challenger_alias, device)
    except CannotServe as exc:
        if not isinstance(exc.__cause__, ModelNotFound):
            raise
        # No challenger yet (none registered since the last promotion): the champion serves alone, and
        # the app starts the canary/shadow when the alias is set (serving.app.PendingChallenger).
        log.warning(
            "canary/shadow off until models:/%s is set (the server follows it; %s)",
            name,
            " ".join(str(exc.__cause__).split()),
        )
        pending = PendingChallenger(
            RegistryLoader(own, settings.challenger_alias, device), name, lambda p: sized_for(own, p)
        )
        return {"challenger": pending, "record_shadow": record}
    log.info(
        "challenger %r: canary %.1f%%, shadow %.2f",
        predictor,
        settings.serve_canary_percent,
        settings.serve_shadow_fraction,
    )
    return {
        "challenger": ModelSource(predictor, loader, name, sized_for(own, predictor)),
        "record_shadow": record,
    }


def _load(
    settings: Settings, alias: str, device: str, isolated: bool = False
) -> tuple[Predictor, ModelLoader]:
    """``models:/{settings.model_name}@{alias}`` and its loader; CannotServe says what to do.

    ``isolated``: the model runs in a worker process of its own (serving/minions.py), loaded there the
    same way (the alias is resolved here, so a missing version says so before any process starts); its
    new versions load in new workers."""
    loader = RegistryLoader(settings, alias, device)
    try:
        if not isolated:
            return loader.load(), loader
        layout = compute_layout(settings, device)
        into_worker = IsolatedLoader(
            loader,
            loader.load,
            streams=layout.concurrent_batches,
            threads=layout.torch_threads,
            call_timeout_s=settings.serve_worker_timeout_s,
        )
        predictor: IsolatedPredictor = into_worker.load(loader.resolve())
        log.info("%s@%s runs in worker pid %s", settings.model_name, alias, predictor.pid)
        return predictor, into_worker
    except ModelNotFound as exc:
        # The first `lightbox serve` of a project, before any promotion, or a mistyped model name: the
        # message (RegistryLoader.resolve) says which, and what to do.
        raise CannotServe(f"cannot serve: {exc}") from exc
    except (ArtifactError, RuntimeUnavailable) as exc:
        # Files not the ones the gates judged, never judged, or a forced runtime the version cannot
        # use: the message names the version and what to do.
        raise CannotServe(f"cannot serve models:/{settings.model_name}@{loader.alias}: {exc}") from exc


def sized_for(settings: Settings, predictor: Predictor) -> Settings:
    """Set torch's threads for the device's compute layout, warm the model up, and fix the batch cap:
    the configured one; else measured on this device (serving.calibration); with serve_calibrate off,
    the table default (serving.runtime.DEFAULT_MAX_BATCH).
    Returns the settings the app runs with (the cap filled in)."""
    device = predictor.device.type
    layout = compute_layout(settings, device)
    # Before the batch threads exist: each thread takes torch's intra-op setting when it first runs.
    apply_torch_threads(layout)
    log.info(
        "compute layout: %d batches side by side, torch threads %s",
        layout.concurrent_batches,
        layout.torch_threads or "unchanged",
    )
    if settings.serve_max_batch_size is None and settings.serve_calibrate:
        # Raises when not even batch 1 fits the device: then no cap could serve, so the server stops
        # at start with that message rather than failing requests later.
        measured = calibrate(
            predictor.predict,
            device,
            layout.concurrent_batches,
            max_batch_ms=settings.serve_max_latency_ms * BUDGET_SHARE,
        )
        log.info("calibrated on %s: %s", device, measured.summary())
        settings = settings.model_copy(update={"serve_max_batch_size": measured.chosen})
    cap = max_batch_size(settings, device)
    predictor.warmup((1, cap))
    return settings.model_copy(update={"serve_max_batch_size": cap})
