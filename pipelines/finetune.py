"""Stage (train_mode finetune): fine-tune the backbone with Ray Tune, starting from the fitted heads.

Called by ``pipelines.train.run`` inside its MLflow run, after the heads-only search and fit: the model
it returns (a LightboxModel whose extractor weights changed, ``feature_version`` ending in ``+ft``) is
logged, registered and gated exactly like a heads-only candidate. Its test metrics come from features
its own extractor computes, never from the Feast features of the frozen one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lightbox.settings import Settings
from training.decoded import CachePolicy
from training.finetune import Images
from training.finetune_search import FinetuneTrial, model_from_checkpoint, run_search, search_key
from training.fit import Split
from training.model import LightboxModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneResult:
    model: LightboxModel
    trial: FinetuneTrial  # the best trial
    trials: int


def images_of(settings: Settings, rows: Sequence[Mapping[str, str]], split: Split) -> Images:
    """A split's image files beside the labels training already parsed (same rows, same order)."""
    return Images(tuple(settings.data_dir / r["path"] for r in rows), split.score, split.tags)


def resources(settings: Settings) -> tuple[float, int]:
    """(GPUs per trial, DataLoader workers per trial) for this machine and these settings."""
    cuda = torch.cuda.is_available() if settings.use_gpu is None else settings.use_gpu
    gpus = settings.finetune_gpus_per_trial
    if gpus is None:
        gpus = 1.0 if cuda else 0.0
    workers = settings.finetune_loader_workers
    if workers is None:
        # A GPU eats images faster than one core decodes them (docs/benchmarks.md); on CPU the decoders
        # share the trial's own cores with the forward pass.
        workers = min(8, os.cpu_count() or 1) if gpus else max(0, settings.finetune_cpus_per_trial - 1)
    return gpus, workers


def run(
    settings: Settings,
    start: LightboxModel,
    rows: Mapping[str, Sequence[Mapping[str, str]]],
    splits: Mapping[str, Split],
    *,
    data_key: str,
    parent_run_id: str | None,
    tags: Mapping[str, str],
) -> FinetuneResult:
    """Search, then the best trial's best checkpoint as a model. ``data_key`` names the data version:
    with the starting config and the settings it keys the experiment folder, so the same training
    started again (a killed DAG run) restores its search instead of repeating finished trials."""
    from lightbox.adapters import mlflow_runs
    from lightbox.ray_cluster import start_ray

    gpus, workers = resources(settings)
    fixed = {
        "aug_ops": settings.augment_ops,
        "batch_size": settings.finetune_batch_size,
        "head_lr": settings.finetune_head_lr,
        "seed": settings.tune_seed,
    }
    key = search_key(
        fixed
        | {
            "data": data_key,
            "start": start.config.to_params(),
            "trials": settings.finetune_trials,
            "epochs": settings.finetune_epochs,
            "gpus": gpus,
        }
    )
    ctx = None
    if parent_run_id is not None:
        ctx = {"settings": settings, "parent_run_id": parent_run_id, "tags": dict(tags)}
    started = start_ray(settings, ship_code=False)
    try:
        results = run_search(
            start.cpu().eval(),
            images_of(settings, rows["train"], splits["train"]),
            images_of(settings, rows["validation"], splits["validation"]),
            trials=settings.finetune_trials,
            epochs=settings.finetune_epochs,
            storage=settings.state / "ray_results",
            key=key,
            fixed=fixed,
            gpus_per_trial=gpus,
            cpus_per_trial=settings.finetune_cpus_per_trial,
            workers=workers,
            seed=settings.tune_seed,
            mlflow_ctx=ctx,
            cache=CachePolicy(settings.finetune_cache_mb << 20, settings.state / "finetune-cache"),
        )
    finally:
        if started:
            import ray

            ray.shutdown()
    if parent_run_id is not None:
        ended = mlflow_runs.end_open_children(settings, parent_run_id, "stopped early by ASHA")
        if ended:
            log.info("%d fine-tune trials were stopped early by ASHA", len(ended))
    best = results[0]
    if best.checkpoint is None:
        raise RuntimeError("no fine-tune trial reported a validation loss and a checkpoint")
    return FinetuneResult(model_from_checkpoint(start, best.params, best.checkpoint), best, len(results))


def predictions(
    settings: Settings, model: LightboxModel, rows: Sequence[Mapping[str, str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, scores on [0, 1], tag probabilities) of a split's images through the fine-tuned
    extractor: the same decode and extraction path as the feature job (pipelines.features.extract)."""
    from pipelines.features import extract
    from training.fit import predict

    feats = extract(settings, [settings.data_dir / r["path"] for r in rows], extractor=model.extractor)
    model.cpu()
    s, t = predict(model.heads.cpu(), feats)
    return feats, s, t
