"""What `lightbox train` records in MLflow, on a real (SQLite) store, in seconds: Ray Tune, Feast, DVC and
the model's upload are stubbed, everything train.run logs is real. Two runs on the same data are told
apart by name, the final fit's curve lines up with the trials', two trainings without gates leave
`lightbox doctor` at exit 0, and Ctrl-C mid-upload leaves nothing half-done."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

import mlflow
from lightbox.adapters import dvc_repo, mlflow_registry
from lightbox.adapters.dvc_repo import DatasetVersion
from lightbox.cli import app
from lightbox.manifest import LabelSpec
from lightbox.settings import Settings, settings_env
from pipelines import doctor, train
from training import tune
from training.fit import Split, epoch_metrics, fit_heads
from training.model import FEATURE_DIM, ModelConfig

pytestmark = [pytest.mark.integration]
VERSION = DatasetVersion("0123456789abcdef.dir", "", "data", 36, 1, "")
SPEC = LabelSpec({"a": 20, "b": 20}, score_name="score", score_range=(0.0, 1.0))


def _data() -> train.TrainingData:
    rng = np.random.default_rng(0)
    rows, splits = {}, {}
    for name in ("train", "validation", "test"):
        n = 12
        rows[name] = [{"image_id": f"{name}{i}", "path": f"{name}{i}.jpg", "split": name} for i in range(n)]
        tags = np.zeros((n, 2), np.float32)
        tags[::2, 0] = tags[1::2, 1] = 1  # each tag on half the images of every split
        x = rng.normal(size=(n, FEATURE_DIM)).astype(np.float32)
        splits[name] = Split(x, rng.random(n).astype(np.float32), tags)
    return train.TrainingData([r for rs in rows.values() for r in rs], SPEC, splits, rows)


def _search(base: ModelConfig, trn: Split, val: Split, *, trials: int, **_: object) -> list[tune.TrialResult]:
    """Trials as run_search returns them: each history row what tune._trainable reports for an epoch."""
    results = []
    for i in range(trials):
        rows: list[dict[str, float]] = []

        def report(epoch: int, metrics: dict[str, float], rows: list[dict[str, float]] = rows) -> None:
            step = {"training_iteration": epoch, "timestamp": time.time(), "time_this_iter_s": 0.01}
            rows.append(step | epoch_metrics(metrics.pop("train_loss"), metrics))

        config = {"hidden": 16 * (i + 1)}
        fit_heads(ModelConfig.from_dict(train.asdict(base) | config), trn, val, report=report)
        history = pd.DataFrame(rows)
        best = history.loc[history["val_loss"].idxmin()]
        results.append(
            tune.TrialResult(
                f"t{i}",
                config,
                history,
                rows[-1],
                int(best["training_iteration"]),
                float(best["val_loss"]),
                f"trial_{i}",
            )
        )
    return sorted(results, key=lambda t: t.best)


def _upload(interrupt: bool) -> object:
    """log_lightbox_model without the model: a logged model, PENDING until its upload is done (as MLflow
    keeps it), then a registered version; ``interrupt``: Ctrl-C arrives during the upload."""

    def log(model: object, example: object, name: str, **_: object) -> str:
        logged = mlflow.initialize_logged_model(name="model")
        if interrupt:
            raise KeyboardInterrupt
        c = mlflow.MlflowClient()
        try:
            c.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
        v = c.create_model_version(name, f"models:/{logged.model_id}", run_id, model_id=logged.model_id)
        c.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        return str(v.version)

    return log


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setattr(dvc_repo, "load_version", lambda settings: VERSION)
    monkeypatch.setattr(dvc_repo, "matches_tracked", lambda settings, subdir: True)  # no DVC repo here
    monkeypatch.setattr(train, "load_training_data", lambda settings: _data())
    monkeypatch.setattr(train, "start_ray", lambda settings, ship_code: False)
    monkeypatch.setattr(tune, "run_search", _search)
    monkeypatch.setattr(train, "_input_example", lambda s, rows: np.zeros((1, 3, 224, 224), np.uint8))
    monkeypatch.setattr(mlflow_registry, "log_lightbox_model", _upload(interrupt=False))
    previous = mlflow.get_tracking_uri()
    yield Settings(project_dir=tmp_path, min_tag_count=2)
    mlflow.set_tracking_uri(previous)


def _metric_keys(run: object) -> set[str]:
    return {k for k in run.data.metrics if k == "train_loss" or k.startswith("val_")}  # type: ignore[attr-defined]


def test_two_runs_on_the_same_data_are_named_apart_and_chart_like_their_trials(project: Settings) -> None:
    first = train.run(project, trials=1, epochs=3)
    second = train.run(project, trials=2, epochs=4)
    c = mlflow_registry.client(project)
    names = [c.get_run(r.run_id).info.run_name for r in (first, second)]
    assert names[0].startswith("tune-0123456789-1x3-") and names[1].startswith("tune-0123456789-2x4-"), names

    parent = c.get_run(second.run_id)
    trials = c.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{second.run_id}'"
    )
    assert len(trials) == 2
    # The same per-epoch names in the tuning run (its final fit) and in each trial, at steps 1..epochs.
    assert {"train_loss", "val_loss", "val_score_srocc", "val_tags_map"} <= _metric_keys(parent)
    for t in trials:
        assert _metric_keys(t) == _metric_keys(parent)
        assert "best_val_loss" in t.data.metrics
    for key in ("train_loss", "val_loss"):
        assert [m.step for m in c.get_metric_history(second.run_id, key)] == [1, 2, 3, 4]
        assert [m.step for m in c.get_metric_history(trials[0].info.run_id, key)] == [1, 2, 3, 4]
    assert not [k for k in parent.data.metrics if k.startswith("fit_")]
    # The kept epoch's validation metrics: a summary, in MLflow and in the command's result alike.
    assert parent.data.metrics["best_val_loss"] == pytest.approx(second.metrics["best_val_loss"])
    assert {"test_score_srocc", "test_tags_map"} <= set(parent.data.metrics)

    # Trained twice, gates not run: nothing was killed, so `lightbox doctor` says what to run, exit 0.
    result = CliRunner().invoke(app, ["doctor"], env=settings_env(project))
    assert result.exit_code == 0, result.output
    assert f"note: lightbox v{first.model_version} is not gated yet: run `lightbox gates" in result.output
    assert f"note: lightbox v{second.model_version} is not gated yet" in result.output
    assert "left behind" in result.output and "never gated" not in result.output


def test_ctrl_c_during_the_upload_leaves_nothing_for_doctor(
    project: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mlflow_registry, "log_lightbox_model", _upload(interrupt=True))
    with pytest.raises(KeyboardInterrupt):
        train.run(project, trials=1, epochs=2)
    c = mlflow_registry.client(project)
    exp = c.get_experiment_by_name(project.mlflow_experiment).experiment_id
    (model,) = c.search_logged_models([exp])
    assert model.status == LoggedModelStatus.FAILED  # not PENDING for the next training to settle
    assert doctor.check(project) == []
