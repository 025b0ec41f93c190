"""Feast: the only module that imports feast. Applies the declarative repo in features/,
writes offline features, materializes them online and reads them back (historical and online)."""

from __future__ import annotations

import importlib.util
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lightbox.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

OFFLINE_FILE = "image_features.parquet"


def _export_env(settings: Settings) -> None:
    # feature_store.yaml and definitions.py read their locations from these variables.
    os.environ.update(settings.feast_env())


def open_store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore

    _export_env(settings)
    for p in (settings.feast_registry_path, settings.feast_online_path):
        if "://" not in p:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
    # The yaml picks the online store (SQLite or Redis); the registry type follows its URL.
    return FeatureStore(repo_path=str(settings.feast_repo_path), fs_yaml_file=settings.feast_yaml)


def teardown(settings: Settings) -> None:
    """Remove this project's online rows and registry objects (tests, decommissioning)."""
    open_store(settings).teardown()


def _definitions(settings: Settings) -> list:
    _export_env(settings)
    path = settings.feast_repo_path / "definitions.py"
    spec = importlib.util.spec_from_file_location("lightbox_feature_definitions", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no feature definitions at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.DEFINITIONS)


def write_offline(settings: Settings, df: pd.DataFrame) -> Path:
    """Atomically replace the offline feature table (a re-run never leaves half a file)."""
    out_dir = settings.feast_offline_path
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / OFFLINE_FILE
    tmp = path.with_suffix(".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_offline(settings: Settings) -> pd.DataFrame | None:
    """The offline feature table (the feature cache), or None before the first feature run."""
    path = settings.feast_offline_path / OFFLINE_FILE
    return pd.read_parquet(path) if path.exists() else None


def is_applied(settings: Settings) -> bool:
    """Whether the feature service is in the registry (a fresh registry needs apply + materialize)."""
    try:
        open_store(settings).get_feature_service(settings.feature_service)
    except Exception:  # Feast raises its own NotFound types per registry backend
        return False
    return True


def apply_and_materialize(settings: Settings, end: datetime | None = None) -> FeatureStore:
    store = open_store(settings)
    store.apply(_definitions(settings))
    end = end or datetime.now(UTC) + timedelta(minutes=1)
    store.materialize(start_date=end - timedelta(days=3650), end_date=end)
    return store


def historical(
    settings: Settings, entity_df: pd.DataFrame, store: FeatureStore | None = None
) -> pd.DataFrame:
    """Point-in-time join of the feature service onto ``entity_df`` (image_id, event_timestamp, ...)."""
    store = store or open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    return store.get_historical_features(entity_df=entity_df, features=service).to_df()


def online(settings: Settings, image_ids: list[str], store: FeatureStore | None = None) -> dict[str, list]:
    store = store or open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    rows = [{"image_id": i} for i in image_ids]
    return store.get_online_features(features=service, entity_rows=rows).to_dict()
