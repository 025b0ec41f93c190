"""Feast: the only module that imports feast. Applies the declarative repo in features/,
writes offline features, materializes them online and reads them back (historical and online); and
publishes bulk scoring's per-(image, model name, model version) scores and embeddings (``write_scores``)."""

from __future__ import annotations

import importlib.util
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lightbox.feature_schema import FEATURE_VIEW, SCORE_KEYS, SCORE_SERVICE, SCORE_VIEW
from lightbox.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore

OFFLINE_FILE = "image_features.parquet"
log = logging.getLogger(__name__)


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


# What the online store last received in full (pipelines/features.py): a run killed between writing the
# offline table and materializing it had left its new images out of the online store for good, since
# the next run found nothing to compute and skipped materializing.
_MATERIALIZED = "feast_materialized.json"


def offline_fingerprint(settings: Settings, table: pd.DataFrame) -> str:
    """The rows an online store holds once ``table`` is materialized into it: (image id, timestamp)
    pairs, and the store's identity (another store, or the same one emptied, needs them again)."""
    import hashlib

    pairs = sorted(zip(table["image_id"].astype(str), table["event_timestamp"].astype(str), strict=True))
    store = (
        f"redis {settings.feast_redis}"
        if settings.feast_online_store == "redis"
        else f"sqlite {settings.feast_online_path}"
    )
    digest = hashlib.sha256(f"{settings.feast_project} {store}\n{pairs}".encode())
    return digest.hexdigest()


def is_materialized(settings: Settings, fingerprint: str) -> bool:
    marker = settings.state / _MATERIALIZED
    if settings.feast_online_store == "sqlite" and not Path(settings.feast_online_path).exists():
        return False
    return marker.exists() and marker.read_text().strip() == fingerprint


def online_behind(settings: Settings) -> int | None:
    """The offline table's image count when the online store has not received it in full (a features run
    killed before materializing, or a store emptied or switched since); None when it has, or before any
    features run. Reads only the key columns."""
    if not (settings.feast_offline_path / OFFLINE_FILE).exists():
        return None
    keys = _offline_keys(settings)
    return None if is_materialized(settings, offline_fingerprint(settings, keys)) else len(keys)


def materialize_offline(settings: Settings) -> None:
    """Apply and materialize the offline table as it is, and record it (doctor's repair)."""
    keys = _offline_keys(settings)
    apply_and_materialize(settings)
    record_materialized(settings, offline_fingerprint(settings, keys))


def _offline_keys(settings: Settings) -> pd.DataFrame:
    """The offline table's (image_id, event_timestamp) columns alone: what the fingerprint reads."""
    import pyarrow.parquet as pq

    path = settings.feast_offline_path / OFFLINE_FILE
    return pq.read_table(path, columns=["image_id", "event_timestamp"]).to_pandas()


def record_materialized(settings: Settings, fingerprint: str) -> None:
    marker = settings.state / _MATERIALIZED
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(fingerprint + "\n")
    tmp.replace(marker)


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


def apply(settings: Settings) -> FeatureStore:
    """Register every definition of features/ (idempotent); the store, for the writes that follow.

    A registry applied by an earlier version keyed the scores view by (image_id, model_version) only:
    its online rows cannot be found by the view's keys now. They are written again from the view's
    offline parts (which carry model_name), once, when this apply changes the view's keys."""
    store = open_store(settings)
    old_keys = _score_keys(store)
    store.apply(_definitions(settings))
    if old_keys is not None and old_keys != set(SCORE_KEYS):
        n = republish_scores(settings, store)
        log.info("scores view keyed by %s now: %d online rows written again from its parts", SCORE_KEYS, n)
    return store


def republish_scores(settings: Settings, store: FeatureStore) -> int:
    """Write the scores view's offline parts to the online store again, the newest row of each key
    (``materialize`` cannot: Feast's file offline store fails on the tag_probs map). Reads the keys of
    every part first, then each part's winning rows, one part at a time: memory stays one part's."""
    import pyarrow.parquet as pq

    parts = sorted(scores_dir(settings).glob("*.parquet"))  # a half-written part is .<name>.parquet.tmp
    newest: dict[tuple[str, ...], tuple[datetime, int, int]] = {}
    for i, path in enumerate(parts):
        keys = pq.read_table(path, columns=[*SCORE_KEYS, "event_timestamp"]).to_pydict()
        for row, (*key, ts) in enumerate(
            zip(*(keys[c] for c in (*SCORE_KEYS, "event_timestamp")), strict=True)
        ):
            k = tuple(key)
            if k not in newest or ts >= newest[k][0]:
                newest[k] = (ts, i, row)
    rows: dict[int, list[int]] = {}
    for _, i, row in newest.values():
        rows.setdefault(i, []).append(row)
    written = 0
    for i, take in sorted(rows.items()):
        df = pq.read_table(parts[i], schema=_scores_schema()).take(sorted(take)).to_pandas()
        df["tag_probs"] = [None if v is None else dict(v) for v in df["tag_probs"]]
        store.write_to_online_store(SCORE_VIEW, df)
        written += len(df)
    return written


def _score_keys(store: FeatureStore) -> set[str] | None:
    """The join keys of the registered scores view; None when it is not registered."""
    try:
        view = store.get_feature_view(SCORE_VIEW)
    except Exception:  # Feast raises its own NotFound types per registry backend
        return None
    return {column.name for column in view.entity_columns}


def apply_and_materialize(
    settings: Settings, end: datetime | None = None, views: tuple[str, ...] = (FEATURE_VIEW,)
) -> FeatureStore:
    """Apply, then materialize ``views`` (the training features by default: the scores view is written
    online as each part is written, and may have no offline folder yet)."""
    store = apply(settings)
    end = end or datetime.now(UTC) + timedelta(minutes=1)
    store.materialize(start_date=end - timedelta(days=3650), end_date=end, feature_views=list(views))
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


# --- bulk scores (pipelines/score_catalog.py --online) -------------------------------------------------


def scores_dir(settings: Settings) -> Path:
    """The scores view's offline source: a folder of parquet parts (features/definitions.py)."""
    return settings.feast_offline_path / SCORE_VIEW


def write_scores(settings: Settings, store: FeatureStore, df: pd.DataFrame, part: str) -> None:
    """One flush of scores: an offline part (atomic; the view's history, for backfills and point-in-time
    reads), then the same rows online. Writing online per part is what ``materialize`` would do, without
    re-reading every earlier part: memory and time stay flat over a catalog. Online rows are upserts by
    (image_id, model_name, model_version), so a part written again by a resumed job changes nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if df.empty:
        return
    folder = scores_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{part}.parquet"
    tmp = folder / f".{part}.parquet.tmp"  # a leading dot: readers of the folder skip it
    pq.write_table(pa.Table.from_pandas(df, schema=_scores_schema(), preserve_index=False), tmp)
    tmp.replace(final)
    store.write_to_online_store(SCORE_VIEW, df)


def _scores_schema() -> pa.Schema:
    import pyarrow as pa

    # One schema for every part: a part of a tags-only model (all scores null) still reads as float.
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("model_version", pa.string()),
            ("event_timestamp", pa.timestamp("us", tz="UTC")),
            ("score", pa.float32()),
            ("tag_probs", pa.map_(pa.string(), pa.float32())),
            ("embedding", pa.list_(pa.float32())),
            ("model_name", pa.string()),
        ]
    )


def online_scores(
    settings: Settings, keys: list[tuple[str, str, str]], store: FeatureStore | None = None
) -> dict[str, list]:
    """The scores view's online rows for (image_id, model_name, model_version) keys (SCORE_KEYS), in
    order (None where absent): a version number alone names no model (pets v1, places v1)."""
    if any(len(k) != len(SCORE_KEYS) for k in keys):
        raise ValueError(f"online_scores: each key is ({', '.join(SCORE_KEYS)})")
    store = store or open_store(settings)
    service = store.get_feature_service(SCORE_SERVICE)
    rows = [dict(zip(SCORE_KEYS, k, strict=True)) for k in keys]
    return store.get_online_features(features=service, entity_rows=rows).to_dict()
