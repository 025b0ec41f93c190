"""Stage 1: build the labelled image-quality dataset into ``settings.data_dir``.

Sources (bundled photos, then rendered scenes) each give one pristine image plus seeded distorted
variants; the score and tags follow from the distortions (see lightbox.dataset). Output::

    <data_dir>/images/<image_id>.png|.jpg
    <data_dir>/manifest.csv   (MANIFEST_COLUMNS, one row per image, sorted by image_id)

The output is byte-for-byte deterministic for the same parameters, so the DVC md5 of the folder is
reproducible, and it is built in a temporary folder beside data_dir and swapped in, so a crash never
leaves half a dataset.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lightbox import distortions
from lightbox.dataset import Distortion, assign_splits, photo_sources, procedural_scene, score_for, tags_for
from lightbox.settings import Settings

MANIFEST_NAME = "manifest.csv"
IMAGES_SUBDIR = "images"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "source_id",
    "split",
    "score",
    "tags",
    "distortions",
    "max_level",
    "width",
    "height",
)
TAG_SEPARATOR = "|"
COMBINED_PROBABILITY = 0.2  # share of variants that get two different distortions
CLEAN_VARIANTS = 2  # per source, besides the pristine original: see clean_variants()
# Pairs that cancel out rather than compound: never combined.
_EXCLUDED_PAIRS = {frozenset({"overexposed", "underexposed"})}
# Fast zlib level: the default 260 images encode in well under a second; sizes matter less than speed.
_PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class DataBuildResult:
    data_dir: Path
    manifest_path: Path
    n_images: int
    n_sources: int
    splits: Mapping[str, int]  # images per split


@dataclass(frozen=True)
class Source:
    source_id: str
    image: Image.Image
    content_tags: tuple[str, ...]


def run(
    settings: Settings, *, n_sources: int | None = None, variants: int | None = None, seed: int | None = None
) -> DataBuildResult:
    """Build the dataset into settings.data_dir, replacing what was there. Same parameters, same bytes."""
    n_sources = settings.dataset_sources if n_sources is None else n_sources
    variants = settings.dataset_variants if variants is None else variants
    seed = settings.dataset_seed if seed is None else seed
    if n_sources < 1:
        raise ValueError(f"n_sources must be >= 1, got {n_sources}")
    if variants < 0:
        raise ValueError(f"variants must be >= 0, got {variants}")

    sources = load_sources(n_sources, seed, settings.image_max_side)
    splits = assign_splits([s.source_id for s in sources], seed)
    data_dir = settings.data_dir
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.building-", dir=data_dir.parent))
    try:
        rows = _write_images(tmp, sources, splits, variants, seed)
        write_manifest(tmp / MANIFEST_NAME, MANIFEST_COLUMNS, rows)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the swapped-in folder should look like any other
        swap_in(tmp, data_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = Counter(row["split"] for row in rows)
    return DataBuildResult(
        data_dir=data_dir,
        manifest_path=data_dir / MANIFEST_NAME,
        n_images=len(rows),
        n_sources=len(sources),
        splits={name: counts.get(name, 0) for name in ("train", "validation", "test")},
    )


# --- sources ---------------------------------------------------------------------------------------


def load_sources(n_sources: int, seed: int, max_side: int) -> list[Source]:
    """The bundled photos first, then rendered scenes up to n_sources; longest side == max_side."""
    sources = [
        Source(source_id, resize_longest(img, max_side), tuple(tags))
        for source_id, img, tags in photo_sources()[:n_sources]
    ]
    for i in range(n_sources - len(sources)):
        img, tags = procedural_scene(_child_seed(seed, 0, i), max_side)
        sources.append(Source(f"scene-{i:03d}", img, tuple(tags)))
    return sources


def resize_longest(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


def _child_seed(seed: int, *path: int) -> int:
    # Independent, order-free streams per (purpose, index): adding a source does not reshuffle others.
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


# --- variants --------------------------------------------------------------------------------------


def plan_distortions(rng: np.random.Generator) -> list[Distortion]:
    """One random distortion at a random level, sometimes two different ones; in application order."""
    count = 2 if rng.random() < COMBINED_PROBABILITY else 1
    while True:
        kinds = [str(k) for k in rng.choice(distortions.KINDS, size=count, replace=False)]
        if frozenset(kinds) not in _EXCLUDED_PAIRS:
            break
    levels = rng.integers(1, 6, size=count)
    return sorted(zip(kinds, (int(v) for v in levels), strict=True), key=_application_order)


def _application_order(d: Distortion) -> tuple[bool, int]:
    # JPEG last: it is the file encoding itself, so its bytes are what lands on disk.
    return d[0] == "jpeg", distortions.KINDS.index(d[0])


def render(img: Image.Image, plan: Sequence[Distortion], rng: np.random.Generator) -> tuple[bytes, str]:
    """Apply the plan and encode: (file bytes, file extension). JPEG-distorted images stay JPEG files."""
    for kind, level in plan:
        if kind != "jpeg":
            img = distortions.apply(img, kind, level, rng)
    jpeg_levels = [level for kind, level in plan if kind == "jpeg"]
    if jpeg_levels:
        return distortions.jpeg_bytes(img, jpeg_levels[0]), ".jpg"
    return encode_png(img), ".png"


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # No pnginfo/exif is passed, so Pillow writes no timestamp or text chunk: bytes depend on pixels only.
    img.save(buf, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def clean_variants(img: Image.Image) -> list[tuple[bytes, str, tuple[int, int]]]:
    """Renditions that are *not* defects and keep score 1.0: a high-quality JPEG re-encode and a 0.75x
    downscale. Without them the only pristine examples are PNGs at one size, and a model learns that
    any JPEG or any size change is damage (the golden set's invariance checks caught exactly that)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0, optimize=False)
    small = img.resize(
        (max(1, round(img.width * 0.75)), max(1, round(img.height * 0.75))), Image.Resampling.LANCZOS
    )
    return [(buf.getvalue(), ".jpg", img.size), (encode_png(small), ".png", small.size)]


def _write_images(
    root: Path, sources: Sequence[Source], splits: Mapping[str, str], variants: int, seed: int
) -> list[dict[str, str]]:
    (root / IMAGES_SUBDIR).mkdir()
    rows = []
    per_source = variants + 1 + CLEAN_VARIANTS
    with tqdm(total=len(sources) * per_source, desc="build dataset", unit="img") as bar:
        for index, source in enumerate(sources):
            rng = np.random.default_rng(_child_seed(seed, 1, index))
            split = splits[source.source_id]
            for j in range(variants + 1):
                plan = [] if j == 0 else plan_distortions(rng)
                image_id = f"{source.source_id}-{j:02d}"
                data, ext = render(source.image, plan, rng)
                rel = f"{IMAGES_SUBDIR}/{image_id}{ext}"
                (root / rel).write_bytes(data)
                rows.append(_row(image_id, rel, source, split, plan))
                bar.update()
            for k, (data, ext, size) in enumerate(clean_variants(source.image), start=variants + 1):
                image_id = f"{source.source_id}-{k:02d}"
                rel = f"{IMAGES_SUBDIR}/{image_id}{ext}"
                (root / rel).write_bytes(data)
                rows.append(_row(image_id, rel, source, split, [], size))
                bar.update()
    return sorted(rows, key=lambda r: r["image_id"])


def _row(
    image_id: str,
    rel: str,
    source: Source,
    split: str,
    plan: Sequence[Distortion],
    size: tuple[int, int] | None = None,
) -> dict[str, str]:
    w, h = size or source.image.size  # distortions keep the size
    return {
        "image_id": image_id,
        "path": rel,
        "source_id": source.source_id,
        "split": split,
        "score": f"{score_for(plan):.4f}",  # fixed formatting: float repr must not vary the bytes
        "tags": TAG_SEPARATOR.join(tags_for(plan, source.content_tags)),
        "distortions": "+".join(f"{k}:{lvl}" for k, lvl in plan) or "none",
        "max_level": str(max((lvl for _, lvl in plan), default=0)),
        "width": str(w),
        "height": str(h),
    }


# --- manifest I/O (shared with validate_data) --------------------------------------------------------


def write_manifest(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> None:
    """Write the CSV atomically (temp file + rename in the same folder) with a fixed dialect."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as strings): the raw view, so a rewrite keeps untouched rows byte-identical."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def swap_in(tmp: Path, target: Path) -> None:
    # Two renames (POSIX has no portable directory swap): between them the target is briefly absent,
    # but a crash there leaves the complete old copy at `.<name>.old-<pid>`, never a partial dataset.
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
