"""The synthetic source: render the deterministic demo dataset as an imagefolder, then import it.

Sources (bundled photos, then rendered scenes) each give one pristine image plus seeded distorted
variants; the score and tags follow from the distortions (see lightbox.dataset). The renderer writes a
Hugging Face imagefolder (``metadata.csv``: file_name, score, tags, split, group, distortions) into a
temporary folder, and ``pipelines.importer`` brings it into data/ exactly as it brings a user's photos:
one path into data/. Same parameters, same bytes, so the DVC md5 is reproducible.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lightbox import distortions
from lightbox.dataset import Distortion, photo_sources, procedural_scene, score_for, tags_for
from lightbox.manifest import IMAGES_SUBDIR, TAG_SEPARATOR, write_csv
from lightbox.progress import progress
from lightbox.settings import Settings
from pipelines import importer

# No split column: the importer assigns splits by group (the source image), as for a user's photos, and
# moves a group to train when a tag would otherwise have no training example.
METADATA_COLUMNS: tuple[str, ...] = ("file_name", "score", "tags", "group", "distortions")
COMBINED_PROBABILITY = 0.2  # share of variants that get two different distortions
CLEAN_VARIANTS = 2  # per source, besides the pristine original: see clean_variants()
# Pairs that cancel out rather than compound: never combined.
_EXCLUDED_PAIRS = {frozenset({"overexposed", "underexposed"})}
# Fast zlib level: the default 260 images encode in well under a second; sizes matter less than speed.
_PNG_COMPRESS_LEVEL = 1
SOURCE_FORMAT = "synthetic"


class DemoSetRefused(RuntimeError):
    """The synthetic set would replace the photos the user imported (the message says what to do)."""


def users_photos(settings: Settings) -> str | None:
    """Why the synthetic set must not be rendered into this project, or None: its ``data/`` or golden set
    holds photos the user imported, which the set would replace (and the demo's gates would judge the
    demo's model on the user's golden labels). The demo, `lightbox data build` and the lightbox_data DAG
    run without a source (an empty or misspelled ``source`` in the trigger form) all ask this first."""
    from lightbox.manifest import ManifestError, read_label_spec

    for folder in (settings.data_dir, settings.golden_dir):
        try:
            spec = read_label_spec(folder)
        except ManifestError:
            continue  # nothing imported there (or nothing readable: the demo set rebuilds it)
        if spec.source_format != SOURCE_FORMAT:
            return (
                f"{folder} holds your imported photos ({spec.source_format or 'imported'}): the synthetic "
                "demo set would replace them. To import photos give their source (`lightbox data import "
                "SOURCE`, or the lightbox_data DAG's `source` param); to try the demo, run it in a folder of "
                "its own: LIGHTBOX_PROJECT_DIR=/tmp/lightbox-demo lightbox demo"
            )
    return None


@dataclass(frozen=True)
class Source:
    source_id: str
    image: Image.Image
    content_tags: tuple[str, ...]


def run(
    settings: Settings, *, n_sources: int | None = None, variants: int | None = None, seed: int | None = None
) -> importer.ImportResult:
    """Render the synthetic set and import it into settings.data_dir. Same parameters, same bytes.

    Raises DemoSetRefused, before rendering anything, in a project that holds the user's photos."""
    refusal = users_photos(settings)
    if refusal is not None:
        raise DemoSetRefused(refusal)
    n_sources = settings.dataset_sources if n_sources is None else n_sources
    variants = settings.dataset_variants if variants is None else variants
    seed = settings.dataset_seed if seed is None else seed
    with tempfile.TemporaryDirectory(prefix="lightbox-synthetic-") as tmp:
        render_imagefolder(
            Path(tmp), n_sources=n_sources, variants=variants, seed=seed, max_side=settings.image_max_side
        )
        options = importer.ImportOptions(
            format="imagefolder",
            score_range="0,1",
            source_format=SOURCE_FORMAT,
            source_label=f"lightbox data build --sources {n_sources} --variants {variants} --seed {seed}",
        )
        return importer.run(settings, tmp, options)


def render_imagefolder(root: Path, *, n_sources: int, variants: int, seed: int, max_side: int) -> int:
    """Write the synthetic set as an imagefolder under ``root``; returns the number of images."""
    if n_sources < 1:
        raise ValueError(f"n_sources must be >= 1, got {n_sources}")
    if variants < 0:
        raise ValueError(f"variants must be >= 0, got {variants}")
    sources = load_sources(n_sources, seed, max_side)
    rows = _write_images(root, sources, variants, seed)
    write_csv(root / "metadata.csv", METADATA_COLUMNS, rows)
    return len(rows)


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


def _write_images(root: Path, sources: Sequence[Source], variants: int, seed: int) -> list[dict[str, str]]:
    (root / IMAGES_SUBDIR).mkdir()
    rows = []
    per_source = variants + 1 + CLEAN_VARIANTS
    with progress(total=len(sources) * per_source, desc="render synthetic set", unit="img") as bar:
        for index, source in enumerate(sources):
            rng = np.random.default_rng(_child_seed(seed, 1, index))
            for j in range(variants + 1):
                plan = [] if j == 0 else plan_distortions(rng)
                data, ext = render(source.image, plan, rng)
                rows.append(_write(root, f"{source.source_id}-{j:02d}{ext}", data, source, plan))
                bar.update()
            for k, (data, ext, _) in enumerate(clean_variants(source.image), start=variants + 1):
                rows.append(_write(root, f"{source.source_id}-{k:02d}{ext}", data, source, []))
                bar.update()
    return sorted(rows, key=lambda r: r["file_name"])


def _write(root: Path, name: str, data: bytes, source: Source, plan: Sequence[Distortion]) -> dict[str, str]:
    rel = f"{IMAGES_SUBDIR}/{name}"
    (root / rel).write_bytes(data)
    return {
        "file_name": rel,
        "score": f"{score_for(plan):.4f}",  # fixed formatting: float repr must not vary the bytes
        "tags": TAG_SEPARATOR.join(tags_for(plan, source.content_tags)),
        "group": source.source_id,
        "distortions": "+".join(f"{k}:{lvl}" for k, lvl in plan) or "none",
    }


def swap_in(tmp: Path, target: Path) -> None:
    """Kept here for the golden renderer: see pipelines.importer.swap_in."""
    importer.swap_in(tmp, target)
