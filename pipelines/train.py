"""Stage: tune the heads with Ray Tune on Feast features, fit the best, log and register the model.

The dataset declares its labels (``lightbox.manifest``): the heads are sized from its label spec (its
tags, its score scale, or no score at all). Every trial becomes a nested MLflow run under one tuning
run; the final model (feature extractor + heads) is logged with its signature, input example, test
metrics, the label spec (``labels.json`` and model metadata) and the dataset version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from lightbox import drift, manifest
from lightbox.adapters import dvc_repo, mlflow_registry, mlflow_runs
from lightbox.manifest import LabelSpec
from lightbox.ray_cluster import start_ray
from lightbox.settings import CODE_ROOT, Settings
from pipelines import doctor
from pipelines.features import feature_matrix, load_for_training
from training.fit import Split, fit_heads, predict, validation_metrics
from training.metrics import ap_by_tag, evaluate, metric_names
from training.model import FEATURE_DIM, LightboxModel, ModelConfig
from training.tune import TrialResult

log = logging.getLogger(__name__)


class NotTrainable(ValueError):
    """The dataset cannot give a meaningful model (an empty split, a tag no train image has); the
    message says what to change. A ValueError, as it was before it had a name."""


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float]
    config: dict
    trials: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainingData:
    """The dataset as training sees it: manifest rows, their label spec and a Split per split name."""

    rows: list[dict[str, str]]
    spec: LabelSpec
    splits: dict[str, Split]
    split_rows: dict[str, list[dict[str, str]]]


def base_config(spec: LabelSpec, *, epochs: int, seed: int) -> ModelConfig:
    """The heads the label spec asks for: its training vocabulary, its score scale (if it has one)."""
    low, high = spec.score_range if spec.score_range is not None else (0.0, 1.0)
    return ModelConfig(
        tag_names=spec.tags,
        has_score=spec.has_score,
        score_low=low,
        score_high=high,
        score_name=spec.score_name or "score",
        epochs=epochs,
        seed=seed,
    )


def to_split(rows: Sequence[Mapping[str, str]], features: pd.DataFrame, spec: LabelSpec) -> Split:
    """Labels from manifest rows (scores normalised to [0, 1], NaN where unlabelled) beside features of
    the same images, in the same order."""
    scores = np.array([manifest.parse_score(r["score"]) for r in rows], np.float32)
    return Split(
        # An empty split is refused by check_trainable with its name; feature_matrix cannot stack nothing.
        x=feature_matrix(features) if len(rows) else np.zeros((0, FEATURE_DIM), np.float32),
        score=spec.normalise(scores) if spec.has_score else np.full(len(rows), np.nan, np.float32),
        tags=manifest.tags_matrix([r["tags"] for r in rows], spec.tags),
    )


def check_trainable(spec: LabelSpec, splits: Mapping[str, Split]) -> None:
    """Refuse a dataset that cannot give a meaningful model, saying what to change."""
    if not spec.has_score and not spec.has_tags:
        raise NotTrainable(
            "the dataset has no score labels and no tag with enough images "
            f"(min_tag_count {spec.min_tag_count}): nothing to train"
        )
    for name, split in splits.items():
        if len(split) == 0:
            raise NotTrainable(
                f"the {name} split is empty: import more images or change the split fractions "
                "(split_validation_fraction, split_test_fraction)"
            )
    train = splits["train"]
    absent = [t for t, n in zip(spec.tags, train.tags.sum(axis=0), strict=True) if n == 0]
    if absent:
        raise NotTrainable(
            f"tags with no positive image in the train split: {', '.join(absent)}. Label more images with "
            "them, or raise min_tag_count so they are left out, and re-import"
        )
    if spec.has_score and not np.isfinite(train.score).any():
        raise NotTrainable("the dataset declares a score, but no train image has one: label some, re-import")


def load_training_data(settings: Settings) -> TrainingData:
    """The manifest and label spec of ``settings.data_dir`` joined with the features of exactly its
    images (``FeaturesOutOfDate`` when any is missing or stale)."""
    rows = manifest.read_manifest(settings.data_dir)
    spec = manifest.read_label_spec(settings.data_dir)
    if spec.excluded_tags:
        log.warning(
            "tags on fewer than %d images are left out of training: %s",
            spec.min_tag_count,
            ", ".join(spec.excluded_tags),
        )
    features = load_for_training(settings, [r["image_id"] for r in rows])
    split_of = np.array([r["split"] for r in rows])
    unknown = sorted(set(split_of) - set(manifest.SPLITS))
    if unknown:
        raise NotTrainable(f"manifest rows in unknown splits {unknown}: re-import the data")
    split_rows: dict[str, list[dict[str, str]]] = {}
    splits: dict[str, Split] = {}
    for name in manifest.SPLITS:
        keep = np.flatnonzero(split_of == name)
        split_rows[name] = [rows[i] for i in keep]
        splits[name] = to_split(split_rows[name], features.iloc[keep], spec)
    check_trainable(spec, splits)
    return TrainingData(rows=rows, spec=spec, splits=splits, split_rows=split_rows)


def tuning_run_name(data_version: str, trials: int, epochs: int, mode: str, started: datetime) -> str:
    """The tuning run's name: ``tune-<data version>-<trials>x<epochs>[-finetune]-<MMDD-HHMMSS>``.

    Why each part: the data version says what it learnt from; trials x epochs (and the mode, when it is
    not the default) say how hard it searched, the usual difference between two runs on the same data;
    the local start time tells apart two runs that differ in nothing else, and sorts them."""
    search = f"{trials}x{epochs}" + ("-finetune" if mode == "finetune" else "")
    return f"tune-{data_version}-{search}-{started.strftime('%m%d-%H%M%S')}"


def curve_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """One epoch's metrics from a history row (a Tune report, or a ``fit_heads`` log row): the names
    ``training.fit.epoch_metrics`` gives them, logged at step = epoch in the trial runs and, for the
    final fit, in the tuning run, so MLflow's compare charts draw both on the same axes."""
    return {k: float(v) for k, v in row.items() if k == "train_loss" or k.startswith("val_")}


def kept_epoch_metrics(val: Mapping[str, float]) -> dict[str, float]:
    """``best_val_<metric>``: the validation metrics of the epoch a fit keeps (``val``: its
    ``validation_metrics``), one summary point. Not ``val_<metric>``: those name the per-epoch curve,
    and a summary under the same name would add a stray point to it."""
    return {f"best_val_{k}": v for k, v in val.items()}


def _trial_times_ms(history: pd.DataFrame) -> tuple[int | None, int | None]:
    """(start, end) of a Ray Tune trial in epoch ms: Ray stamps each report with the wall time
    (``timestamp``, s) and the epoch's duration (``time_this_iter_s``)."""
    if not len(history) or "timestamp" not in history:
        return None, None
    first = history.iloc[0]
    start = float(first["timestamp"]) - float(first.get("time_this_iter_s", 0.0) or 0.0)
    return int(start * 1000), int(float(history["timestamp"].iloc[-1]) * 1000)


def test_metrics(
    config: ModelConfig, test: Split, s_pred: np.ndarray, t_pred: np.ndarray
) -> dict[str, float]:
    """The run's test metrics. Scores are compared normalised, so ``test_score_mae`` is a fraction of
    the score range (what the gates compare, whatever the scale); ``test_score_mae_raw`` is the same on
    the dataset's scale. ``test_ap_<tag>`` for every tag with positives in the test split."""
    m = evaluate(s_pred if config.has_score else None, test.score, t_pred, test.tags)
    out = {f"test_{k}": v for k, v in m.items()}
    if "score_mae" in m:
        out["test_score_mae_raw"] = m["score_mae"] * (config.score_high - config.score_low)
    aps = ap_by_tag(t_pred, test.tags, config.tag_names)
    keys = metric_names("test_ap_", config.tag_names)
    return out | {keys[tag]: ap for tag, ap in aps.items()}


def _log_plots(
    config: ModelConfig,
    rows: Sequence[Mapping[str, str]],
    s_pred: np.ndarray,
    t_pred: np.ndarray,
    split: Split,
) -> dict[str, float]:
    """Evaluation plots of the test split as artifacts; returns the metrics only they compute
    (per-distortion SROCC on the synthetic set, tag calibration)."""
    import mlflow
    from training import plots
    from training.metrics import expected_calibration_error, srocc_by_kind

    figures = {}
    extra: dict[str, float] = {}
    if config.has_score:
        low, high = config.score_low, config.score_high
        figures["plots/score_pred_vs_true.png"] = plots.score_scatter(
            low + (high - low) * s_pred,
            low + (high - low) * split.score,
            score_range=(low, high),
            score_name=config.score_name,
        )
        # Ground-truth distortions exist only in the synthetic set (its optional manifest column).
        if rows and "distortions" in rows[0]:
            labelled = np.isfinite(split.score)
            kinds = [str(r["distortions"]) for r, keep in zip(rows, labelled, strict=True) if keep]
            by_kind = srocc_by_kind(s_pred[labelled], split.score[labelled], kinds)
            figures["plots/srocc_per_distortion.png"] = plots.srocc_by_kind(by_kind)
            extra |= {f"test_score_srocc_{k}": v for k, v in by_kind.items()}
    if config.num_tags:
        ece = expected_calibration_error(t_pred, split.tags)
        figures["plots/tags_pr_curves.png"] = plots.pr_curves(t_pred, split.tags, config.tag_names)
        figures["plots/tags_calibration.png"] = plots.calibration(t_pred, split.tags, ece)
        figures["plots/tags_ap_per_tag.png"] = plots.ap_per_tag(
            ap_by_tag(t_pred, split.tags, config.tag_names)
        )
        extra["test_tags_ece"] = ece
    for path, fig in figures.items():
        mlflow.log_figure(fig, path)
        plots.plt.close(fig)
    return extra


def run(
    settings: Settings,
    *,
    trials: int | None = None,
    epochs: int | None = None,
    model_name: str | None = None,
    mode: str | None = None,
) -> TrainResult:
    """Tune, fit, log and register under ``model_name`` (default ``settings.model_name``): a team keeps
    one registered model per dataset. ``mode`` (default ``settings.train_mode``) ``finetune`` then
    fine-tunes the backbone from the images, starting from the fitted heads (pipelines/finetune.py)."""
    import torch
    from mlflow.data.pandas_dataset import from_pandas

    import mlflow
    from training.tune import run_search

    if model_name is not None:
        settings = settings.model_copy(update={"model_name": model_name})
    if mode is not None:
        if mode not in ("heads", "finetune"):
            raise ValueError(f"train mode must be heads or finetune, got {mode!r}")
        settings = settings.model_copy(update={"train_mode": mode})
    trials = trials or settings.tune_trials
    epochs = epochs or settings.tune_epochs
    # A killed training left its runs RUNNING, its model PENDING, its version ungated: settle them first.
    doctor.recover_training(settings)
    version = dvc_repo.load_version(settings)
    # The run records this version as its data (lineage, the gates' reports): data/ must still be it. An
    # edit by hand after `data version` (a relabelled column) had trained on other labels than it named.
    if not dvc_repo.matches_tracked(settings, settings.data_subdir):
        raise dvc_repo.NoDatasetVersion(
            f"{settings.data_dir} changed since it was versioned as {version.short}: run `lightbox data "
            "version` (or the lightbox_data DAG), then `lightbox features`, to train on it"
        )
    data = load_training_data(settings)
    spec, splits = data.spec, data.splits
    use_gpu = torch.cuda.is_available() if settings.use_gpu is None else settings.use_gpu
    base = base_config(spec, epochs=epochs, seed=settings.tune_seed)

    # ship_code=False: training's trials import the installed packages, as before.
    started = start_ray(settings, ship_code=False)
    try:
        results = run_search(
            base,
            splits["train"],
            splits["validation"],
            trials=trials,
            epochs=epochs,
            storage=settings.state / "ray_results",
            use_gpu=use_gpu,
            seed=settings.tune_seed,
        )
    finally:
        if started:
            import ray

            ray.shutdown()

    mlflow_registry.configure(settings)
    tags = {
        "lightbox.stage": "train",
        "data.md5": version.md5,
        "data.git_rev": version.git_rev,
        "data.uri": version.uri(),
        "feature_service": settings.feature_service,
        # The code's own checkout, which is not the data project's repo when project_dir points elsewhere.
        "code.revision": dvc_repo.head_revision(CODE_ROOT),
    }
    # The process on the run, so a later start can tell this run, killed, from one still going.
    owner = mlflow_runs.owner_tags()
    name = tuning_run_name(version.short, trials, epochs, settings.train_mode, datetime.now().astimezone())
    # Ctrl-C while logging: the run ends FAILED (its `with`), and what it left half-done (a model
    # PENDING mid-upload, a version without gates) is settled at once, not by the next training.
    with (
        doctor.settled_if_interrupted(settings),
        mlflow.start_run(run_name=name, tags=tags | owner) as parent,
    ):
        frame = pd.DataFrame(data.rows, columns=["image_id", "path", "split", "group", "score", "tags"])
        dataset = from_pandas(
            frame,
            source=mlflow_registry.dvc_dataset_source(
                version.uri(), version.md5, version.git_rev, version.remote
            ),
            name=f"lightbox-data-{version.short}",
            digest=version.short,
        )
        mlflow.log_input(dataset, context="training")
        # The labels the model answers in: read back by the gates and the promotion to compare models.
        mlflow.log_dict(spec.to_dict(), "labels.json")
        for i, trial in enumerate(results):
            trial_tags = tags | owner | {"lightbox.stage": "trial"}
            # Named as Ray Tune names the trial, so the two UIs can be read side by side.
            run_name = trial.name or f"trial-{i}-{trial.trial_id}"
            # The trial's own start and end (from Ray's per-epoch timestamps), not the logging time.
            started_ms, ended_ms = _trial_times_ms(trial.history)
            client = mlflow_registry.client(settings)
            trial_run = client.create_run(
                parent.info.experiment_id,
                start_time=started_ms,
                tags=trial_tags | {"mlflow.parentRunId": parent.info.run_id, "mlflow.runName": run_name},
                run_name=run_name,
            )
            with mlflow.start_run(run_id=trial_run.info.run_id, nested=True):
                # Every hyperparameter, not just the searched ones, so trials compare column by column;
                # epochs is what the trial really ran (ASHA stops the weak ones early).
                ran = int(trial.history["training_iteration"].max()) if len(trial.history) else 0
                params = ModelConfig.from_dict(asdict(base) | trial.config).to_params()
                mlflow.log_params(params | {"epochs": str(ran), "epochs_planned": params["epochs"]})
                mlflow.log_params({"best_epoch": str(trial.best_epoch), "rank": str(i)})
                mlflow.log_input(dataset, context="training")
                for _, row in trial.history.iterrows():
                    mlflow.log_metrics(curve_metrics(row), step=int(row["training_iteration"]))
                mlflow.log_metrics(_trial_kept_epoch(trial))
            if ended_ms is not None:
                client.set_terminated(trial_run.info.run_id, end_time=ended_ms)
        best = ModelConfig.from_dict(asdict(base) | results[0].config)
        mlflow.log_params(best.to_params() | {"trials": trials})

        device = "cuda" if use_gpu else "cpu"
        # The final fit keeps its best epoch on the validation split, as the trials did.
        curve: list[dict[str, float]] = []
        heads = fit_heads(best, splits["train"], splits["validation"], device=device, log=curve).cpu()
        for row in curve:
            mlflow.log_metrics(curve_metrics(row), step=int(row["epoch"]))
        mlflow.log_param("best_epoch", heads.best_epoch)
        val = validation_metrics(heads, splits["validation"], best)
        test = splits["test"]
        s_pred, t_pred = predict(heads, test.x)
        metrics = test_metrics(best, test, s_pred, t_pred) | kept_epoch_metrics(val)
        model = LightboxModel(best, heads).eval()
        if settings.train_mode == "finetune":
            # The heads-only model is the baseline the fine-tuned one is compared with, on the same splits.
            mlflow.log_metrics({f"heads_{k}": v for k, v in metrics.items()})
            model, metrics, s_pred, t_pred = _fine_tune(
                settings, model, data, version.md5, parent.info.run_id, tags | owner
            )
            best = model.config
        metrics |= _log_plots(best, data.split_rows["test"], s_pred, t_pred, test)
        mlflow.log_metrics(metrics)
        # What the model answers on its own test split: the drift monitor's reference (pipelines/monitor.py).
        mlflow.log_text(
            drift.reference_json(best.tag_names, s_pred if best.has_score else None, t_pred),
            drift.REFERENCE_ARTIFACT,
        )

        model_version = mlflow_registry.log_lightbox_model(
            model, _input_example(settings, data.rows), settings.model_name, label_spec=spec.to_dict()
        )
        client = mlflow_registry.client(settings)
        for k, v in tags.items():
            client.set_model_version_tag(settings.model_name, model_version, k, v)
        client.set_model_version_tag(settings.model_name, model_version, "run_id", parent.info.run_id)
        mlflow_registry.set_alias(settings, model_version, settings.challenger_alias)
        return TrainResult(
            run_id=parent.info.run_id,
            model_name=settings.model_name,
            model_version=model_version,
            metrics=metrics,
            config=asdict(best),
            trials=len(results),
        )


def _fine_tune(
    settings: Settings,
    start: LightboxModel,
    data: TrainingData,
    data_key: str,
    parent_run_id: str,
    tags: Mapping[str, str],
) -> tuple[LightboxModel, dict[str, float], np.ndarray, np.ndarray]:
    """The fine-tuned model (its own extractor), its test and validation metrics (from features its own
    extractor computes) and its test predictions, for the plots."""
    import mlflow
    from pipelines import finetune

    result = finetune.run(
        settings,
        start,
        data.split_rows,
        data.splits,
        data_key=data_key,
        parent_run_id=parent_run_id,
        tags=tags,
    )
    model, trial = result.model, result.trial
    # Only new keys: the run's params already hold the heads' config, and MLflow params cannot change.
    mlflow.log_params(
        {k: v for k, v in model.config.extra.items() if k.startswith("ft_")}
        | {
            "ft_trial": trial.name,
            "ft_best_epoch": str(trial.best_epoch),
            "ft_trials": str(result.trials),
            "ft_feature_version": model.config.feature_version,
        }
    )
    val_x, _, _ = finetune.predictions(settings, model, data.split_rows["validation"])
    val = validation_metrics(
        model.heads,
        Split(val_x, data.splits["validation"].score, data.splits["validation"].tags),
        model.config,
    )
    _, s_pred, t_pred = finetune.predictions(settings, model, data.split_rows["test"])
    metrics = test_metrics(model.config, data.splits["test"], s_pred, t_pred) | kept_epoch_metrics(val)
    return model.eval(), metrics, s_pred, t_pred


def _trial_kept_epoch(trial: TrialResult) -> dict[str, float]:
    """A trial's ``best_val_*``: its validation metrics at the epoch a fit of its config would keep,
    under the names the tuning run gives its final fit's."""
    at_best = trial.history[trial.history["training_iteration"] == trial.best_epoch]
    if not len(at_best):
        return {}
    row = at_best.iloc[0]
    return kept_epoch_metrics(
        {k.removeprefix("val_"): float(row[k]) for k in row.index if k.startswith("val_")}
    )


def _input_example(settings: Settings, rows: Sequence[Mapping[str, str]]) -> np.ndarray:
    from lightbox.imaging import decode_image, to_model_input

    path = settings.data_dir / rows[0]["path"]
    return to_model_input(decode_image(path.read_bytes(), max_pixels=settings.max_pixels))[None]
