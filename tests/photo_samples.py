"""Small labelled photo collections the import and end-to-end tests write (no downloads, no fixtures
checked in): smooth random 'photographs', so perceptual hashes and near duplicates behave as on real
photos, in the layouts users bring."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

# A made-up vocabulary: nothing in lightbox may know these names.
VOCAB = ("heron", "kestrel", "wren")


def photo(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Low-frequency random content with a seeded gradient, upscaled: every seed a different picture."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC)


def jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def imagefolder(root: Path, n: int, *, start: int = 0, size: tuple[int, int] = (96, 64)) -> Path:
    """n photos tagged from VOCAB and rated 1-10, as metadata.csv with '|'-separated tags (columns
    `rating` and `labels`, so the column mapping is exercised too)."""
    (root / "pics").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        name = f"pics/IMG_{i:04d}.jpg"
        (root / name).write_bytes(jpeg(photo(i, size)))
        tags = [VOCAB[i % 3]] + ([VOCAB[(i + 1) % 3]] if i % 4 == 0 else [])
        rows.append({"file_name": name, "rating": str(1 + i % 10), "labels": "|".join(tags)})
    with (root / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file_name", "rating", "labels"])
        w.writeheader()
        w.writerows(rows)
    return root


def learnable_collection(root: Path, n: int, *, start: int = 0, size: tuple[int, int] = (128, 96)) -> Path:
    """n photos whose labels a model can learn from pixels, as a user's rated and tagged shoot would be:
    the 1-10 rating follows exposure, and each tag comes with its own colour cast. Written as
    metadata.csv with `rating` and `labels` columns."""
    (root / "pics").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        rating = 1 + (i * 7) % 10
        tag = VOCAB[i % 3]
        arr = np.asarray(photo(i, size), np.float32) * 0.5
        arr[..., i % 3] += 60.0  # the tag's colour cast
        arr = arr * (0.25 + 0.12 * rating)  # darker photos are rated lower
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        name = f"pics/DSC{i:05d}.jpg"
        (root / name).write_bytes(jpeg(img))
        rows.append({"file_name": name, "rating": str(rating), "labels": tag})
    with (root / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file_name", "rating", "labels"])
        w.writeheader()
        w.writerows(rows)
    return root


def synthetic_spec():  # -> lightbox.manifest.LabelSpec
    """The demo dataset's label spec, as the tests that render the synthetic golden grid need it
    (pipelines.golden renders the grid only for a dataset whose source format is synthetic)."""
    from lightbox.dataset import TAG_VOCABULARY
    from lightbox.manifest import LabelSpec

    return LabelSpec(
        tag_counts=dict.fromkeys(TAG_VOCABULARY, 50),
        score_name="quality",
        score_range=(0.0, 1.0),
        score_range_source="given",
        source_format="synthetic",
    )
