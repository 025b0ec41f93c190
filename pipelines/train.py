"""Stage: tune the heads with Ray Tune on Feast features, fit the best, log and register the model.

Every trial becomes a nested MLflow run under one tuning run; the final model (feature extractor +
heads) is logged with its signature, input example, test metrics and the dataset version.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from lightbox.adapters import dvc_repo, feast_store, mlflow_registry
from lightbox.settings import CODE_ROOT, TAG_VOCABULARY, Settings
from training.fit import Split, fit_heads, predict, validation_metrics
from training.metrics import evaluate
from training.model import STAT_NAMES, LightboxModel, ModelConfig


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


def tags_matrix(tag_lists: pd.Series, vocabulary: tuple[str, ...] = TAG_VOCABULARY) -> np.ndarray:
    index = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros((len(tag_lists), len(vocabulary)), np.float32)
    for row, tags in enumerate(tag_lists):
        for t in str(tags).split("|") if isinstance(tags, str) and tags else []:
            out[row, index[t]] = 1.0
    return out


def load_training_frame(settings: Settings) -> pd.DataFrame:
    """Labels from the manifest joined point-in-time with the Feast feature service."""
    manifest = pd.read_csv(settings.data_dir / "manifest.csv", dtype={"image_id": str})
    entity_df = manifest[["image_id"]].assign(event_timestamp=pd.Timestamp(datetime.now(UTC)))
    feats = feast_store.historical(settings, entity_df)
    frame = manifest.merge(feats.drop(columns=["event_timestamp"]), on="image_id", how="left")
    missing = frame["embedding"].isna().sum()
    if missing:
        raise ValueError(f"{missing} images have no features in Feast: run `lightbox features` first")
    return frame


def to_split(frame: pd.DataFrame) -> Split:
    x = np.hstack(
        [
            np.stack(frame["embedding"].to_numpy()),
            np.stack(frame["quality"].to_numpy()),
            frame[list(STAT_NAMES)].to_numpy(),
        ]
    )
    return Split(
        x=x.astype(np.float32),
        score=frame["score"].to_numpy(np.float32),
        tags=tags_matrix(frame["tags"].fillna("")),
    )


def _start_ray(settings: Settings) -> bool:
    """Connect to the configured Ray cluster, or start a local one on loopback. True if we started it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=settings.ray_num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    return True


def _log_plots(test_frame: pd.DataFrame, s_pred: np.ndarray, t_pred: np.ndarray, split: Split) -> dict:
    """Evaluation plots as artifacts; returns the per-distortion SROCC metrics they show."""
    import mlflow
    from training import plots
    from training.metrics import expected_calibration_error, srocc_by_kind

    by_kind = srocc_by_kind(s_pred, split.score, test_frame["distortions"].astype(str).tolist())
    ece = expected_calibration_error(t_pred, split.tags)
    figures = {
        "plots/score_pred_vs_true.png": plots.score_scatter(s_pred, split.score),
        "plots/srocc_per_distortion.png": plots.srocc_by_kind(by_kind),
        "plots/tags_pr_curves.png": plots.pr_curves(t_pred, split.tags, TAG_VOCABULARY),
        "plots/tags_calibration.png": plots.calibration(t_pred, split.tags, ece),
    }
    for path, fig in figures.items():
        mlflow.log_figure(fig, path)
        plots.plt.close(fig)
    return {f"test_score_srocc_{k}": v for k, v in by_kind.items()} | {"test_tags_ece": ece}


def run(settings: Settings, *, trials: int | None = None, epochs: int | None = None) -> TrainResult:
    import torch
    from mlflow.data.pandas_dataset import from_pandas

    import mlflow
    from training.tune import run_search

    trials = trials or settings.tune_trials
    epochs = epochs or settings.tune_epochs
    version = dvc_repo.load_version(settings)
    frame = load_training_frame(settings)
    splits = {name: to_split(frame[frame["split"] == name]) for name in ("train", "validation", "test")}
    for name, s in splits.items():
        if len(s) == 0:
            raise ValueError(f"the {name} split is empty: build a dataset with more sources")
    use_gpu = torch.cuda.is_available() if settings.use_gpu is None else settings.use_gpu
    base = ModelConfig(tag_names=TAG_VOCABULARY, epochs=epochs, seed=settings.tune_seed)

    started = _start_ray(settings)
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
    with mlflow.start_run(run_name=f"tune-{version.short}", tags=tags) as parent:
        dataset = from_pandas(
            frame[["image_id", "path", "source_id", "split", "score", "tags"]],
            source=mlflow_registry.dvc_dataset_source(
                version.uri(), version.md5, version.git_rev, version.remote
            ),
            name=f"lightbox-data-{version.short}",
            digest=version.short,
        )
        mlflow.log_input(dataset, context="training")
        for i, trial in enumerate(results):
            trial_tags = tags | {"lightbox.stage": "trial"}
            with mlflow.start_run(run_name=f"trial-{i}-{trial.trial_id}", nested=True, tags=trial_tags):
                # Every hyperparameter, not just the searched ones, so trials compare column by column.
                mlflow.log_params(ModelConfig.from_dict(asdict(base) | trial.config).to_params())
                mlflow.log_input(dataset, context="training")
                for _, row in trial.history.iterrows():
                    step = int(row["training_iteration"])
                    mlflow.log_metrics(
                        {k: float(row[k]) for k in row.index if k.startswith("val_")}, step=step
                    )
        best = ModelConfig.from_dict(asdict(base) | results[0].config)
        mlflow.log_params(best.to_params() | {"trials": trials})

        device = "cuda" if use_gpu else "cpu"
        heads = fit_heads(best, splits["train"], device=device).cpu()
        val = validation_metrics(heads, splits["validation"], best)
        test = splits["test"]
        s_pred, t_pred = predict(heads, test.x)
        metrics = {f"test_{k}": v for k, v in evaluate(s_pred, test.score, t_pred, test.tags).items()}
        metrics |= {f"val_{k}": v for k, v in val.items()}
        metrics |= _log_plots(frame[frame["split"] == "test"], s_pred, t_pred, test)
        mlflow.log_metrics(metrics)

        model = LightboxModel(best, heads).eval()
        model_version = mlflow_registry.log_lightbox_model(
            model, _input_example(settings, frame), settings.model_name
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


def _input_example(settings: Settings, frame: pd.DataFrame) -> np.ndarray:
    from lightbox.imaging import decode_image, to_model_input

    path = settings.data_dir / frame["path"].iloc[0]
    return to_model_input(decode_image(path.read_bytes()))[None]
