"""How training's MLflow runs read: two runs on the same data are told apart by their names, and the
tuning run's final fit logs its per-epoch curve under the names the trials log theirs by."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from pipelines import train
from training import tune
from training.fit import Split, fit_heads
from training.model import FEATURE_DIM, ModelConfig

STARTED = datetime(2026, 11, 23, 9, 5, 7)


def test_two_runs_on_the_same_data_are_named_by_what_differs() -> None:
    name = train.tuning_run_name("1a2b3c4", 4, 60, "heads", STARTED)
    assert name == "tune-1a2b3c4-4x60-1123-090507"
    assert train.tuning_run_name("1a2b3c4", 8, 40, "heads", STARTED) == "tune-1a2b3c4-8x40-1123-090507"
    assert (
        train.tuning_run_name("1a2b3c4", 4, 60, "finetune", STARTED)
        == "tune-1a2b3c4-4x60-finetune-1123-090507"
    )
    # Nothing differs but the time: the names still differ.
    later = datetime(2026, 11, 23, 9, 6, 0)
    assert train.tuning_run_name("1a2b3c4", 4, 60, "heads", later) != name


def _splits(n: int = 48) -> tuple[Split, Split]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURE_DIM)).astype(np.float32)
    score = rng.random(n).astype(np.float32)
    tags = (rng.random((n, 2)) > 0.5).astype(np.float32)
    return Split(x[: n // 2], score[: n // 2], tags[: n // 2]), Split(
        x[n // 2 :], score[n // 2 :], tags[n // 2 :]
    )


def test_the_final_fit_curve_has_the_trials_metric_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a trial reports to Tune each epoch (logged on its run at step = epoch) and what the final
    fit's log rows give the tuning run carry the same names: MLflow's compare charts line them up."""
    from ray import tune as ray_tune

    base = ModelConfig(tag_names=("a", "b"), hidden=16, epochs=3)
    trn, val = _splits()
    reported: list[dict[str, float]] = []
    monkeypatch.setattr(ray_tune, "report", lambda metrics, **kw: reported.append(dict(metrics)))
    tune._trainable({"hidden": 16}, trn, val, dataclasses.asdict(base))
    curve: list[dict[str, float]] = []
    fit_heads(base, trn, val, log=curve)

    trial_names = set(train.curve_metrics(reported[0]))
    fit_names = set(train.curve_metrics(curve[0]))
    assert fit_names == trial_names
    assert {"train_loss", "val_loss", "val_score_srocc", "val_tags_map"} <= fit_names
    assert [int(row["epoch"]) for row in curve] == [1, 2, 3]  # the step, as a trial's training_iteration


def test_the_kept_epoch_is_a_summary_apart_from_the_curve() -> None:
    # A summary named val_loss would be a stray point on the val_loss curve.
    kept = train.kept_epoch_metrics({"loss": 0.4, "score_srocc": 0.7})
    assert kept == {"best_val_loss": 0.4, "best_val_score_srocc": 0.7}
    history = pd.DataFrame(
        {"training_iteration": [1, 2, 3], "train_loss": [1.0, 0.8, 0.7], "val_loss": [0.9, 0.5, 0.6]}
    )
    trial = tune.TrialResult("t1", {}, history, {}, best_epoch=2, best=0.5)
    assert train._trial_kept_epoch(trial) == {"best_val_loss": 0.5}
