"""A tiny labelled image set on disk for the fine-tune tests: distorted bundled photos with the synthetic
set's own scores and tags (lightbox.dataset), so the labels mean what the real ones do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightbox import distortions
from lightbox.dataset import photo_sources, score_for, tags_for
from training.finetune import Images

TAGS: tuple[str, ...] = ("blurry", "noisy")


def tiny_images(folder: Path, n: int, seed: int = 0, tags: tuple[str, ...] = TAGS) -> Images:
    """``n`` PNGs (longest side 160: fast to decode, still resized up to the model's 224) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = photo_sources()
    paths, scores, rows = [], [], []
    for i in range(n):
        _, img, content = sources[i % len(sources)]
        img = img.copy()
        img.thumbnail((160, 160))
        kind = ("blur", "noise")[i % 2]
        level = int(rng.integers(1, 6)) if i % 3 else 0
        applied = [(kind, level)] if level else []
        if level:
            img = distortions.apply(img, kind, level, rng)
        path = folder / f"{i:03d}.png"
        img.save(path)
        paths.append(path)
        scores.append(score_for(applied))
        names = set(tags_for(applied, content)) & set(tags)
        rows.append([1.0 if t in names else 0.0 for t in tags])
    return Images(
        tuple(paths), np.array(scores, np.float32), np.array(rows, np.float32).reshape(n, len(tags))
    )
