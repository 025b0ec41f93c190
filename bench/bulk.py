"""Bulk scoring throughput: `lightbox score` over a synthetic catalog, images/s end to end (Ray start,
model load, list, read, decode, model, write), with the registered champion of the current settings.

    .venv/bin/python bench/bulk.py --images 200 [--batch-size 8] [--actors 1]

Only ratios measured in one run on one machine mean anything (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lightbox.settings import load_settings
from pipelines import score_catalog


def write_catalog(root: Path, n: int, size: tuple[int, int] = (640, 480)) -> Path:
    """n JPEGs of smooth random content (photo-like sizes: the decode cost is part of the job)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8))
        small.resize(size, Image.Resampling.BICUBIC).save(root / f"{i:06d}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=None, help="None: calibrated per actor")
    parser.add_argument("--actors", type=int, default=None)
    args = parser.parse_args()
    overrides = {"score_batch_size": args.batch_size, "score_actors": args.actors}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    with tempfile.TemporaryDirectory(prefix="lightbox-bench-bulk-") as tmp:
        (Path(tmp) / "catalog").mkdir()
        catalog = write_catalog(Path(tmp) / "catalog", args.images)
        result = score_catalog.run(settings, str(catalog), str(Path(tmp) / "scores"))
    print(
        json.dumps(
            {
                "images": args.images,
                **overrides,
                "summary": result.summary(),
                "images_per_s": round(result.images_per_s, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
