"""Import benchmark: a user's shoot of camera-size JPEGs into data/ and its features into Feast, then an
--append of a small new batch, timed side by side in one run (only the ratio is meaningful on a shared
machine).

    .venv/bin/python bench/importing.py                       # 2,000 photos at 3000x2000, then +100
    .venv/bin/python bench/importing.py --photos 200 --append 20 --size 1500x1000   # a quick look

The photos are scikit-image's bundled photographs (no download), cropped, flipped and re-exposed per
index so that every file has other bytes and another perceptual hash, upscaled to camera size and saved
as q90 JPEGs with a camera-like 4:2:0 subsampling. Generating them is not timed. Writes a markdown table
(docs/benchmarks.md takes it verbatim) and the raw numbers to .lightbox/bench/importing.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
TAGS = ("portrait", "pet", "food", "sky", "texture")


def _sources() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        arr = getattr(skimage.data, name)()
        out.append(np.asarray(Image.fromarray(arr).convert("RGB")))
    return out


def make_shoot(root: Path, n: int, start: int, size: tuple[int, int]) -> Path:
    """n distinct camera-size JPEGs with metadata.csv (rating 1-10, one or two tags)."""
    (root / "DCIM").mkdir(parents=True, exist_ok=True)
    sources = _sources()
    rows = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = src[y : y + ch, x : x + cw].astype(np.float32) * rng.uniform(0.6, 1.2)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
        name = f"DCIM/IMG_{i:05d}.JPG"
        img.save(root / name, "JPEG", quality=90, subsampling=2)
        tags = [TAGS[i % len(TAGS)]] + ([TAGS[(i + 2) % len(TAGS)]] if i % 3 == 0 else [])
        rows.append({"file_name": name, "score": str(1 + i % 10), "tags": "|".join(tags)})
    with (root / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "score", "tags"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def timed(fn, *args, **kwargs) -> tuple[float, object]:  # noqa: ANN001
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--append", type=int, default=100)
    parser.add_argument("--size", default="3000x2000", help="WxH of the generated photos")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    from lightbox.settings import Settings
    from pipelines import features, importer

    with tempfile.TemporaryDirectory(prefix="lightbox-bench-import-", dir=args.workdir) as tmp:
        work = Path(tmp)
        t_gen = time.perf_counter()
        first_src = make_shoot(work / "shoot", args.photos, 0, size)  # type: ignore[arg-type]
        batch_src = make_shoot(work / "batch", args.append, 10_000_000, size)  # type: ignore[arg-type]
        gen_s = time.perf_counter() - t_gen
        mb = sum(p.stat().st_size for p in (work / "shoot" / "DCIM").iterdir()) / 1e6
        print(f"generated {args.photos}+{args.append} photos ({mb:.0f} MB) in {gen_s:.0f}s", flush=True)

        settings = Settings(project_dir=work / "project", golden_fraction=0.1)
        opts = importer.ImportOptions(score_range="1,10")
        t_import, first = timed(importer.run, settings, str(first_src), opts)
        t_feat, feats = timed(features.run, settings)
        append_opts = importer.ImportOptions(score_range="1,10", append=True)
        t_import2, second = timed(importer.run, settings, str(batch_src), append_opts)
        t_feat2, feats2 = timed(features.run, settings)

    first_total, append_total = t_import + t_feat, t_import2 + t_feat2
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "photos": args.photos,
        "append": args.append,
        "size": args.size,
        "source_mb": round(mb, 1),
        "first": {
            "import_s": round(t_import, 1),
            "features_s": round(t_feat, 1),
            "images": first.n_images,  # type: ignore[attr-defined]
            "golden": first.n_golden,  # type: ignore[attr-defined]
            "computed": feats.n_computed,  # type: ignore[attr-defined]
        },
        "append_run": {
            "import_s": round(t_import2, 1),
            "features_s": round(t_feat2, 1),
            "new": second.n_new,  # type: ignore[attr-defined]
            "computed": feats2.n_computed,  # type: ignore[attr-defined]
        },
        "ratio": round(append_total / first_total, 3),
    }
    out = ROOT / ".lightbox" / "bench" / "importing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    n = args.photos
    print(
        "\n| run | images | import s | features s | total s | images/s |\n|---|---|---|---|---|---|\n"
        f"| first import | {n} | {t_import:.1f} | {t_feat:.1f} | {first_total:.1f} | "
        f"{n / first_total:.1f} |\n"
        f"| --append | {args.append} | {t_import2:.1f} | {t_feat2:.1f} | {append_total:.1f} | "
        f"{args.append / append_total:.1f} |\n\n"
        f"append / first import: {result['ratio']:.3f} (goal <= 0.15); features computed by the append: "
        f"{feats2.n_computed}"  # type: ignore[attr-defined]
    )


if __name__ == "__main__":
    main()
