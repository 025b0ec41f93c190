"""The labelling policy and the source images of the synthetic quality dataset.

Pure logic: a quality score and tags follow from the distortions applied (we know the ground truth
because we made the defect), splits are assigned per source image, and sources are either the colour
photos bundled in scikit-image's wheel or procedurally rendered scenes. No file is written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from lightbox.distortions import param

Distortion = tuple[str, int]  # (kind, level)

# The synthetic set's own vocabulary: one source among others, so it lives here, not in settings.
# Defect tags first: the synthetic golden grid's behavioural checks key on them.
DEFECT_TAGS: tuple[str, ...] = (
    "blurry",
    "noisy",
    "jpeg_artifacts",
    "overexposed",
    "underexposed",
    "low_contrast",
)
CONTENT_TAGS: tuple[str, ...] = ("animal", "person", "food", "space", "object", "texture", "synthetic")
TAG_VOCABULARY: tuple[str, ...] = DEFECT_TAGS + CONTENT_TAGS
SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Perceived quality left by each distortion at levels 1..5 (1.0 = untouched). Strictly falling, so the
# score is monotone in every level; combined distortions multiply (two defects are worse than either).
QUALITY: Mapping[str, tuple[float, ...]] = {
    "blur": (0.90, 0.75, 0.57, 0.38, 0.20),
    "noise": (0.90, 0.76, 0.60, 0.42, 0.24),
    "jpeg": (0.92, 0.80, 0.64, 0.45, 0.25),
    "overexposed": (0.90, 0.75, 0.58, 0.40, 0.22),
    "underexposed": (0.90, 0.75, 0.58, 0.40, 0.22),
    "low_contrast": (0.92, 0.80, 0.64, 0.46, 0.28),
}
DEFECT_TAG: Mapping[str, str] = {
    "blur": "blurry",
    "noise": "noisy",
    "jpeg": "jpeg_artifacts",
    "overexposed": "overexposed",
    "underexposed": "underexposed",
    "low_contrast": "low_contrast",
}
# Level 1 is visible only side by side with the original: labelling it a defect would teach noise.
MIN_TAGGED_LEVEL = 2

# scikit-image sample photos that ship inside the wheel (no pooch download), with their content tags.
# Greyscale samples (camera, brick, grass, ...) are left out: the exposure/colour defects need colour.
PHOTOS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("astronaut", ("person",)),
    ("chelsea", ("animal",)),
    ("coffee", ("food",)),
    ("rocket", ("object",)),
    ("hubble_deep_field", ("space",)),
    ("immunohistochemistry", ("texture",)),
    ("colorwheel", ("synthetic",)),
    ("stereo_motorcycle", ("object",)),
    ("retina", ("texture",)),
    ("logo", ("synthetic",)),
)


def _check(distortions: Iterable[Distortion]) -> list[Distortion]:
    checked = []
    for kind, level in distortions:
        param(kind, level)  # one place decides what a valid (kind, level) is; raises ValueError
        checked.append((kind, int(level)))
    return checked


def score_for(distortions: Sequence[Distortion]) -> float:
    """Quality in [0, 1]: 1.0 for a pristine image, the product of each distortion's quality otherwise."""
    score = 1.0
    for kind, level in _check(distortions):
        score *= QUALITY[kind][level - 1]
    return score


def tags_for(distortions: Sequence[Distortion], content_tags: Iterable[str]) -> list[str]:
    """Sorted unique tags: the defect tag of each distortion at level >= 2, plus the content tags."""
    content = set(content_tags)
    # Defect tags come only from distortions, so a "content" tag must be one of CONTENT_TAGS.
    unknown = sorted(content - set(CONTENT_TAGS))
    if unknown:
        raise ValueError(f"content tags {unknown} are not in CONTENT_TAGS {CONTENT_TAGS}")
    defects = {DEFECT_TAG[kind] for kind, level in _check(distortions) if level >= MIN_TAGGED_LEVEL}
    return sorted(defects | content)


def assign_splits(
    source_ids: Sequence[str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> dict[str, str]:
    """Map each source id to train/validation/test. Split by source so no scene leaks across splits.

    Deterministic for the same ids (in any order) and seed. With >= 3 sources every split gets at least
    one; with fewer, train is filled first.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    ids = sorted(set(source_ids))
    if len(ids) != len(source_ids):
        raise ValueError("source_ids must be unique")
    # Sorting first makes the result independent of the caller's order; the seed alone shuffles.
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    counts = _split_counts(len(ids), fractions)
    splits: dict[str, str] = {}
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        splits.update(dict.fromkeys(order[start : start + count], name))
        start += count
    return splits


def _split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    if n < 3:
        return (n, 0, 0) if n < 2 else (1, 1, 0)
    val = max(1, round(n * fractions[1]))
    test = max(1, round(n * fractions[2]))
    # Keep at least one training source even when validation + test fractions are large.
    while val + test > n - 1:
        if val >= test:
            val -= 1
        else:
            test -= 1
    return n - val - test, val, test


def procedural_scene(seed: int, size: int) -> tuple[Image.Image, list[str]]:
    """Render a colourful scene (gradient sky, shapes, sometimes a texture) of longest side ``size``."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    aspect = rng.choice([1.0, 4 / 3, 3 / 2])
    short = max(8, round(size / aspect))
    w, h = (size, short) if rng.random() < 0.5 else (short, size)
    arr = _gradient(rng, w, h)
    tags = ["synthetic"]
    if rng.random() < 0.5:
        arr = _add_texture(rng, arr)
        tags.append("texture")
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    _draw_shapes(rng, img)
    return img, sorted(tags)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _gradient(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h) * 0.5 + 0.5
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = _colour(rng), _colour(rng)
    return a + t[..., None] * (b - a)


def _add_texture(rng: np.random.Generator, arr: np.ndarray) -> np.ndarray:
    # Fine periodic detail gives blur and JPEG something to destroy, as foliage or fabric do in photos.
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(4, 16)
    theta = rng.uniform(0, np.pi)
    wave = np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period)
    if rng.random() < 0.5:  # checker-like weave instead of plain stripes
        wave = wave * np.sin(2 * np.pi * (-np.sin(theta) * xx + np.cos(theta) * yy) / period)
    amplitude = rng.uniform(20, 60)
    return arr + amplitude * wave[..., None] * (_colour(rng) / 255.0)


def _draw_shapes(rng: np.random.Generator, img: Image.Image) -> None:
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(int(rng.integers(4, 13))):
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        outline = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0 = float(rng.uniform(-0.1, 0.9) * w), float(rng.uniform(-0.1, 0.9) * h)
        x1, y1 = x0 + float(rng.uniform(0.08, 0.5) * w), y0 + float(rng.uniform(0.08, 0.5) * h)
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=2)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill, outline=outline, width=2)
        else:
            points = [(float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))) for _ in range(3)]
            draw.polygon(points, fill=fill, outline=outline)


def photo_sources() -> list[tuple[str, Image.Image, list[str]]]:
    """(source_id, RGB image, content tags) for each bundled scikit-image colour photo, in PHOTOS order."""
    import skimage.data  # imported here: ~0.5 s, and only the dataset build needs it

    sources = []
    for name, tags in PHOTOS:
        data = getattr(skimage.data, name)()
        if isinstance(data, tuple):  # stereo_motorcycle returns (left, right, disparity)
            data = data[0]
        sources.append((name, _to_rgb(np.asarray(data)), list(tags)))
    return sources


def _to_rgb(arr: np.ndarray) -> Image.Image:
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB or RGBA photo, got shape {arr.shape} dtype {arr.dtype}")
    img = Image.fromarray(arr)
    if img.mode == "RGBA":
        # Composite on white rather than dropping alpha, which would expose arbitrary hidden colours.
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")
