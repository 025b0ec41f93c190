"""Run the server: load the alias's model version from the registry, then uvicorn on settings' address."""

from __future__ import annotations

import logging

import uvicorn

from lightbox.settings import Settings
from serving.app import create_app
from serving.predictor import RegistryLoader
from serving.runtime import apply_torch_threads, compute_layout, max_batch_size

log = logging.getLogger(__name__)


def run(settings: Settings, alias: str | None = None) -> None:
    """Serve ``models:/{model_name}@{alias}`` (default: the champion) until interrupted.

    One process, one worker: the model and its batcher live in this process, and a second worker
    would hold a second copy of the model while halving each batcher's batches.
    """
    loader = RegistryLoader(settings, alias or settings.champion_alias)
    predictor = loader.load()
    layout = compute_layout(settings, predictor.device.type)
    apply_torch_threads(layout)  # before the first forward pass: torch sizes its pools on first use
    predictor.warmup((1, max_batch_size(settings, predictor.device.type)))
    log.info(
        "serving %r on http://%s:%d (%d batches side by side, torch threads %s)",
        predictor,
        settings.serve_host,
        settings.serve_port,
        layout.concurrent_batches,
        layout.torch_threads or "unchanged",
    )
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
