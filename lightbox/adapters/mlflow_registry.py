"""MLflow tracking and registry: the only module that talks to MLflow (apart from serving's loader)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lightbox.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


def configure(settings: Settings) -> str:
    """Point the mlflow module at our tracking server/store; returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None:
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
