"""Stage: compute image features with the model's own FeatureExtractor, store them in Feast.

A feature cache keyed by content hash: an image id *is* the hash of its bytes, so a row of the offline
table whose ``feature_version`` is today's extractor never needs computing again. ``--append`` of a new
batch therefore extracts only the new images. Decoding and preprocessing go through lightbox.imaging,
the same path the server uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lightbox import manifest
from lightbox.adapters import feast_store
from lightbox.feature_schema import EMBEDDING_DIM, FEATURE_DIM, FEATURE_VERSION, QUALITY_DIM, STAT_NAMES
from lightbox.progress import progress
from lightbox.settings import Settings
from pipelines.score_catalog import OK, image_pipeline
from training.model import FeatureExtractor


class FeaturesUnreadable(RuntimeError):
    """Images of the dataset that could not be read or decoded (the message names the first few)."""


class FeaturesOutOfDate(RuntimeError):
    """Features missing, or made by another extractor, for images of the dataset being trained on."""


@dataclass(frozen=True)
class FeaturesResult:
    n_images: int  # images of the dataset
    n_computed: int  # extracted by this run
    n_cached: int  # found in the feature cache (same content hash, same feature version)
    offline_path: str
    feature_service: str
    feature_version: str
    event_timestamp: str


class Extractor:
    """The Ray Data model step of feature extraction (an actor): read rows in, features out."""

    def __init__(self, batch_size: int, threads: int, extractor: FeatureExtractor | None = None) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(threads)  # the driver's: features equal to an in-process run's
        self.extractor = (extractor or FeatureExtractor()).eval().to(self.device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["uri"])
        ok = np.flatnonzero(batch["status"] == OK)
        feats = np.zeros((n, FEATURE_DIM), np.float32)
        with torch.inference_mode():
            for start in range(0, len(ok), self.batch_size):
                rows = ok[start : start + self.batch_size]
                x = torch.from_numpy(np.ascontiguousarray(batch["pixels"][rows])).to(self.device)
                feats[rows] = self.extractor(x).float().cpu().numpy()
        return {"uri": batch["uri"], "status": batch["status"], "error": batch["error"], "features": feats}


def extract(
    settings: Settings, paths: list[Path], batch_size: int = 32, extractor: FeatureExtractor | None = None
) -> np.ndarray:
    """Features [N, FEATURE_DIM] for image files, in order, extracted on Ray Data (a local Ray, or the
    cluster at LIGHTBOX_RAY_ADDRESS: then the paths must be readable on its nodes). Raises
    FeaturesUnreadable naming the files that could not be read or decoded."""
    from lightbox.ray_cluster import ray_session

    out = np.zeros((len(paths), FEATURE_DIM), np.float32)
    if not paths:
        return out
    where: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        where.setdefault(str(p), []).append(i)
    kwargs = {"batch_size": batch_size, "threads": torch.get_num_threads(), "extractor": extractor}
    failed: list[str] = []
    with ray_session(settings), progress(total=len(paths), desc="features", unit="img") as bar:
        for batch in image_pipeline(settings, list(where), Extractor, kwargs):
            for uri, status, error, f in zip(
                batch["uri"], batch["status"], batch["error"], batch["features"], strict=True
            ):
                if status != OK:
                    failed.append(f"{uri}: {error}")
                out[where[str(uri)]] = f
            bar.update(len(batch["uri"]))
    if failed:
        raise FeaturesUnreadable(f"{len(failed)} images could not be read: {'; '.join(failed[:5])}")
    return out


def feature_frame(image_ids: Sequence[str], feats: np.ndarray, when: datetime) -> pd.DataFrame:
    """Offline rows in the feature schema's columns."""
    df = pd.DataFrame(
        {
            "image_id": list(image_ids),
            "event_timestamp": pd.Timestamp(when),
            "embedding": list(feats[:, :EMBEDDING_DIM].astype(np.float32)),
            "quality": list(feats[:, EMBEDDING_DIM : EMBEDDING_DIM + QUALITY_DIM].astype(np.float32)),
        }
    )
    for i, name in enumerate(STAT_NAMES):
        df[name] = feats[:, EMBEDDING_DIM + QUALITY_DIM + i].astype(np.float32)
    df["feature_version"] = FEATURE_VERSION
    return df


def run(settings: Settings) -> FeaturesResult:
    rows = manifest.read_manifest(settings.data_dir)
    cached = feast_store.read_offline(settings)
    if cached is not None and "feature_version" in cached:
        # Only today's extractor's rows are kept: features of another version are recomputed.
        cached = cached[cached["feature_version"] == FEATURE_VERSION].drop_duplicates("image_id", keep="last")
    else:
        cached = None
    have = set() if cached is None else set(cached["image_id"])
    todo = [r for r in rows if r["image_id"] not in have]
    now = datetime.now(UTC).replace(microsecond=0)
    feats = extract(settings, [settings.data_dir / r["path"] for r in todo])
    new = feature_frame([r["image_id"] for r in todo], feats, now)
    table = new if cached is None else pd.concat([cached, new], ignore_index=True)
    path = feast_store.write_offline(settings, table)
    fingerprint = feast_store.offline_fingerprint(settings, table)
    if (
        todo
        or cached is None
        or not feast_store.is_applied(settings)
        or not feast_store.is_materialized(settings, fingerprint)
    ):
        feast_store.apply_and_materialize(settings)
        feast_store.record_materialized(settings, fingerprint)
    return FeaturesResult(
        n_images=len(rows),
        n_computed=len(todo),
        n_cached=len(rows) - len(todo),
        offline_path=str(path),
        feature_service=settings.feature_service,
        feature_version=FEATURE_VERSION,
        event_timestamp=now.isoformat(),
    )


def load_for_training(settings: Settings, image_ids: Sequence[str]) -> pd.DataFrame:
    """Features of exactly these images through the Feast feature service (point-in-time join),
    one row per id in order. Raises FeaturesOutOfDate when any is missing or of another extractor:
    training on stale features would label a run with a dataset version it did not see."""
    entity_df = pd.DataFrame({"image_id": list(image_ids)}).assign(
        event_timestamp=pd.Timestamp(datetime.now(UTC))
    )
    from feast.errors import FeastObjectNotFoundException

    try:
        feats = feast_store.historical(settings, entity_df).drop(columns=["event_timestamp"])
    except FeastObjectNotFoundException as exc:  # nothing applied to Feast yet in this project
        raise FeaturesOutOfDate(
            f"no features in Feast yet ({' '.join(str(exc).split())}): run `lightbox features` (or the "
            "lightbox_data DAG) for this dataset version first"
        ) from None
    feats = feats.drop_duplicates("image_id").set_index("image_id").reindex(list(image_ids))
    missing = feats["embedding"].isna()
    version = feats.get("feature_version", pd.Series(index=feats.index, dtype=object))
    stale = ~missing & (version != FEATURE_VERSION)
    if missing.any() or stale.any():
        parts = []
        if missing.any():
            parts.append(f"{int(missing.sum())} have no features (e.g. {feats.index[missing][0]})")
        if stale.any():
            parts.append(f"{int(stale.sum())} have features of another extractor than {FEATURE_VERSION}")
        raise FeaturesOutOfDate(
            f"of {len(feats)} images in the dataset, {' and '.join(parts)}: run `lightbox features` "
            "(or the lightbox_data DAG) for this dataset version first"
        )
    return feats.reset_index()


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """[N, FEATURE_DIM] float32 from a frame with the feature schema's columns."""
    return np.hstack(
        [
            np.stack(frame["embedding"].to_numpy()),
            np.stack(frame["quality"].to_numpy()),
            frame[list(STAT_NAMES)].to_numpy(),
        ]
    ).astype(np.float32)
