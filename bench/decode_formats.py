"""What one photo costs to decode into the model's input, by format, side by side in one run.

    .venv/bin/python bench/decode_formats.py [--size 4032x3024] [--rounds 3]   # ~1 minute

The same picture (smooth random content at a phone's 12 MP) encoded as JPEG, HEIC, AVIF and PNG, each
through ``lightbox.imaging.preprocess_bytes`` (the decode every stage shares: JPEG in draft mode, the
others at full size, then the resize), one process, one image at a time. Formats alternate within each
round, so the machine's drift falls on all alike; the table gives the median ms per photo and its ratio
to JPEG. Only ratios from one run mean anything (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FORMATS = {"JPEG": {"quality": 90}, "HEIF": {"quality": 80}, "AVIF": {"quality": 80}, "PNG": {}}


def encoded(size: tuple[int, int]) -> dict[str, bytes]:
    import lightbox.imaging  # noqa: F401  # registers the HEIF plugin that encodes HEIC here

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    out = {}
    for fmt, options in FORMATS.items():
        buf = io.BytesIO()
        picture.save(buf, fmt, **options)
        out[fmt] = buf.getvalue()
    return out


def main() -> None:
    from lightbox.imaging import preprocess_bytes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="4032x3024", help="WxH of the photo")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-round", type=int, default=5, help="decodes of each format per round")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    blobs = encoded((w, h))
    times: dict[str, list[float]] = {fmt: [] for fmt in blobs}
    for data in blobs.values():
        preprocess_bytes(data, max_pixels=w * h)  # warm: first-call costs fall in no round
    for _ in range(args.rounds):
        for fmt, data in blobs.items():
            for _ in range(args.per_round):
                t0 = time.perf_counter()
                preprocess_bytes(data, max_pixels=w * h)
                times[fmt].append(time.perf_counter() - t0)
    jpeg = statistics.median(times["JPEG"])
    print(f"{w}x{h}, one process, {args.rounds} rounds x {args.per_round} decodes, alternating:\n")
    print("| format | MB | ms per photo (median) | / JPEG |")
    print("|---|---:|---:|---:|")
    for fmt, values in times.items():
        ms = statistics.median(values)
        print(f"| {fmt} | {len(blobs[fmt]) / 1e6:.2f} | {1000 * ms:.1f} | {ms / jpeg:.1f}x |")


if __name__ == "__main__":
    main()
