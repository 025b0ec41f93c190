"""Hyperparameter search over the heads with Ray Tune (ASHA). Data goes to the object store once."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lightbox.feature_schema import SCORE_FEATURE_GROUPS
from training.fit import Split, epoch_metrics, fit_heads
from training.model import ModelConfig

METRIC, MODE = "val_loss", "min"


@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    config: dict
    history: pd.DataFrame  # one row per epoch: training_iteration, train_loss, val_* metrics
    last: dict
    best_epoch: int = 0  # the epoch with the lowest validation loss
    best: float = float("inf")  # that loss
    name: str = ""  # Ray Tune's trial name (its folder), so MLflow runs can carry the same name


def search_space(epochs: int, base: ModelConfig) -> dict:
    """What the trials vary. Only the heads the dataset has: a choice that changes nothing would
    spend trials on duplicates."""
    from ray import tune

    space: dict = {
        "hidden": tune.choice([64, 128, 256]),
        "lr": tune.loguniform(3e-4, 3e-3),
        "dropout": tune.choice([0.0, 0.1, 0.3]),
        "weight_decay": tune.loguniform(1e-5, 1e-2),
        "epochs": epochs,
    }
    if base.has_score:
        # Quality statistics alone suit a technical-quality score; an aesthetic rating also depends
        # on what the photo shows. The data decides.
        space["score_features"] = tune.choice(list(SCORE_FEATURE_GROUPS))
    if base.has_score and base.num_tags:
        space["tag_loss_weight"] = tune.choice([0.5, 1.0, 2.0])  # a balance only with two losses
    return space


def _trainable(params: dict, train: Split, val: Split, base: dict) -> None:
    import torch
    from ray import tune

    config = ModelConfig.from_dict(base | params)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)  # trials run side by side; one thread each avoids oversubscription

    def report(epoch: int, metrics: dict[str, float]) -> None:
        train_loss = metrics.pop("train_loss")
        tune.report(epoch_metrics(train_loss, metrics))

    fit_heads(config, train, val, report=report, device=device)


def run_search(
    base: ModelConfig,
    train: Split,
    val: Split,
    *,
    trials: int,
    epochs: int,
    storage: Path,
    use_gpu: bool,
    seed: int = 0,
) -> list[TrialResult]:
    """Run the search on the connected Ray; returns every trial, best first."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(
        tune.with_parameters(_trainable, train=train, val=val, base=dataclasses.asdict(base)),
        {"cpu": 1, "gpu": 1 if use_gpu else 0},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(epochs, base),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            num_samples=trials,
            scheduler=ASHAScheduler(max_t=epochs, grace_period=min(5, epochs), reduction_factor=2),
            search_alg=BasicVariantGenerator(random_state=seed),
        ),
        run_config=tune.RunConfig(storage_path=str(storage.resolve()), name="tune", verbose=1),
    )
    with interruptible():
        grid = tuner.fit()
    results = []
    for i in range(len(grid)):
        r = grid[i]
        if r.error:
            raise RuntimeError(f"trial failed: {r.error}")
        metrics, config = r.metrics, r.config
        if metrics is None or config is None:
            raise RuntimeError(f"trial {i} finished without reporting metrics and a config")
        history = r.metrics_dataframe if r.metrics_dataframe is not None else pd.DataFrame()
        scored = len(history) and history[METRIC].notna().any()
        best = history.loc[history[METRIC].idxmin()] if scored else None
        results.append(
            TrialResult(
                trial_id=str(metrics.get("trial_id")),
                config={k: v for k, v in config.items()},
                history=history,
                last=dict(metrics),
                best_epoch=int(best["training_iteration"]) if best is not None else 0,
                best=float(best[METRIC]) if best is not None else float("inf"),
                name=str(getattr(r, "path", "") or "").rsplit("/", 1)[-1],
            )
        )
    # Ranked on each trial's best epoch: that epoch's weights are what a fit keeps (fit_heads).
    return sorted(results, key=lambda t: t.best)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C stops the search and the command: Ray Tune's own SIGINT handler only ends the search and
    returns what finished, and the caller would register a model from an interrupted search."""
    previous = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous
