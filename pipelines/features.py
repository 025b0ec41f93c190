"""Stage: compute image features with the model's own FeatureExtractor, store them in Feast.

Decoding and preprocessing go through lightbox.imaging, the same path the server uses.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lightbox.adapters import feast_store
from lightbox.imaging import decode_image, to_model_input
from lightbox.settings import Settings
from training.model import EMBEDDING_DIM, FEATURE_DIM, QUALITY_DIM, STAT_NAMES, FeatureExtractor


@dataclass(frozen=True)
class FeaturesResult:
    n_images: int
    offline_path: str
    feature_service: str
    event_timestamp: str


def _load(path: Path, max_pixels: int) -> np.ndarray:
    return to_model_input(decode_image(path.read_bytes(), max_pixels=max_pixels))


def extract(
    settings: Settings, paths: list[Path], batch_size: int = 32, extractor: FeatureExtractor | None = None
) -> np.ndarray:
    """Features [N, 1284] for image files; decoding runs in threads beside the forward pass."""
    extractor = (extractor or FeatureExtractor()).eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    extractor.to(device)
    out = []
    with ThreadPoolExecutor(max_workers=2) as pool, torch.inference_mode():
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        decoded = (list(pool.map(lambda p: _load(p, settings.max_pixels), b)) for b in batches)
        with tqdm(total=len(paths), desc="features", unit="img") as bar:
            for arrays in decoded:
                x = torch.from_numpy(np.stack(arrays)).to(device, non_blocking=True)
                out.append(extractor(x).float().cpu().numpy())
                bar.update(len(arrays))
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


def run(settings: Settings) -> FeaturesResult:
    manifest = pd.read_csv(settings.data_dir / "manifest.csv", dtype={"image_id": str})
    feats = extract(settings, [settings.data_dir / p for p in manifest["path"]])
    now = datetime.now(UTC).replace(microsecond=0)
    df = pd.DataFrame(
        {
            "image_id": manifest["image_id"].astype(str),
            "event_timestamp": pd.Timestamp(now),
            "embedding": list(feats[:, :EMBEDDING_DIM].astype(np.float32)),
            "quality": list(feats[:, EMBEDDING_DIM : EMBEDDING_DIM + QUALITY_DIM].astype(np.float32)),
        }
    )
    for i, name in enumerate(STAT_NAMES):
        df[name] = feats[:, EMBEDDING_DIM + QUALITY_DIM + i].astype(np.float32)
    path = feast_store.write_offline(settings, df)
    feast_store.apply_and_materialize(settings)
    return FeaturesResult(
        n_images=len(df),
        offline_path=str(path),
        feature_service=settings.feature_service,
        event_timestamp=now.isoformat(),
    )
