"""Run the server: load the alias's model version from the registry, then uvicorn on settings' address."""

from __future__ import annotations

import logging

import uvicorn

from lightbox.adapters.mlflow_registry import ArtifactError
from lightbox.settings import Settings
from serving.app import create_app
from serving.calibration import calibrate
from serving.runtime import apply_torch_threads, compute_layout, max_batch_size
from training.predictor import ModelNotFound, Predictor, RegistryLoader, RuntimeUnavailable

log = logging.getLogger(__name__)


class CannotServe(RuntimeError):
    """The alias names no servable version (none promoted yet, or files not the ones the gates judged);
    the message names the model and says what to do."""


def run(settings: Settings, alias: str | None = None) -> None:
    """Serve ``models:/{model_name}@{alias}`` (default: the champion) until interrupted.

    One process, one worker: the model and its batcher live in this process, and a second worker
    would hold a second copy of the model while halving each batcher's batches.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Threads first: ONNX Runtime fixes a session's threads when it is made, at load.
    apply_torch_threads(compute_layout(settings, device))
    loader = RegistryLoader(settings, alias or settings.champion_alias, device)
    try:
        predictor = loader.load()
    except ModelNotFound as exc:
        # The first `lightbox serve` of a project, before any promotion: say how to make a champion.
        if loader.alias == settings.champion_alias:
            raise CannotServe(
                f"cannot serve models:/{settings.model_name}@{loader.alias}: no model has been promoted "
                f"yet; promote a trained version with `lightbox promote --version N` (or run the "
                f"lightbox_train DAG, which promotes when the gates pass)"
            ) from exc
        raise CannotServe(
            f"cannot serve models:/{settings.model_name}@{loader.alias}: no version carries "
            f"@{loader.alias}; serve the champion (no --alias) or set the alias first"
        ) from exc
    except (ArtifactError, RuntimeUnavailable) as exc:
        # Files not the ones the gates judged, never judged, or a forced runtime the version cannot
        # use: the message names the version and what to do.
        raise CannotServe(f"cannot serve models:/{settings.model_name}@{loader.alias}: {exc}") from exc
    settings = sized_for(settings, predictor)
    log.info("serving %r on http://%s:%d", predictor, settings.serve_host, settings.serve_port)
    app = create_app(settings, predictor, loader=loader)
    uvicorn.run(
        app,
        host=settings.serve_host,
        port=settings.serve_port,
        workers=1,
        log_level="info",
        access_log=False,  # per-request lines cost more than the batching saves; /metrics counts them
        timeout_graceful_shutdown=10,
    )


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
        measured = calibrate(predictor.predict, device, layout.concurrent_batches)
        log.info("calibrated on %s: %s", device, measured.summary())
        settings = settings.model_copy(update={"serve_max_batch_size": measured.chosen})
    cap = max_batch_size(settings, device)
    predictor.warmup((1, cap))
    return settings.model_copy(update={"serve_max_batch_size": cap})
