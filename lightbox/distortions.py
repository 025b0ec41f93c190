"""Graded image distortions: the defects the quality model learns to see.

Pure functions of (image, kind, level, rng): Pillow + numpy only, no I/O, no global random state, so a
seeded ``numpy.random.Generator`` makes every output reproducible. Levels run 1 (subtle) to 5 (strongest);
the parameters are tuned for images whose longest side is a few hundred pixels.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping

import numpy as np
from PIL import Image, ImageFilter

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

# One row per kind, one parameter per level (index 0 = level 1). Read the table to know what a level means.
PARAMS: Mapping[str, tuple[float, ...]] = {
    "blur": (0.8, 1.5, 2.5, 4.0, 6.0),  # Gaussian radius, pixels
    "noise": (6.0, 12.0, 22.0, 35.0, 55.0),  # Gaussian sigma, in 0..255 intensity units
    "jpeg": (45, 30, 18, 10, 5),  # JPEG quality (lower = more blocking/ringing)
    "overexposed": (1.3, 1.6, 2.0, 2.5, 3.2),  # gain on linear-ish intensity, clipped at white
    "underexposed": (0.75, 0.55, 0.4, 0.28, 0.18),  # gain, crushing towards black
    "low_contrast": (0.75, 0.55, 0.4, 0.28, 0.18),  # factor that pulls pixels to the image mean
}
KINDS: tuple[str, ...] = tuple(PARAMS)

# Fixed JPEG encoder settings: the same pixels always give the same bytes (DVC hashes the files).
_JPEG_SUBSAMPLING = 2  # 4:2:0, what cameras and the web use, so artefacts look like real ones


def param(kind: str, level: int) -> float:
    """The table entry for (kind, level); ValueError naming the bad value otherwise."""
    if kind not in PARAMS:
        raise ValueError(f"unknown distortion kind {kind!r}; expected one of {', '.join(KINDS)}")
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or level not in LEVELS:
        raise ValueError(f"distortion level must be an integer in 1..5, got {level!r}")
    return PARAMS[kind][int(level) - 1]


def jpeg_bytes(img: Image.Image, level: int) -> bytes:
    """Encode at the level's quality. Exposed so a dataset writer can keep these exact bytes on disk."""
    return _encode_jpeg(img.convert("RGB"), int(param("jpeg", level)))


def _encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=_JPEG_SUBSAMPLING, optimize=False)
    return buf.getvalue()


def apply(img: Image.Image, kind: str, level: int, rng: np.random.Generator) -> Image.Image:
    """Return a new RGB image with ``kind`` applied at ``level`` (1..5); the input is not modified."""
    value = param(kind, level)
    return _APPLY[kind](img.convert("RGB"), value, rng)


def _blur(img: Image.Image, radius: float, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))


def _noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    arr = _as_float(img)
    # Per-channel noise (not luminance-only): what a small sensor at high ISO produces.
    return _from_float(arr + rng.normal(0.0, sigma, size=arr.shape).astype(np.float32))


def _jpeg(img: Image.Image, quality: float, rng: np.random.Generator) -> Image.Image:
    with Image.open(io.BytesIO(_encode_jpeg(img, int(quality)))) as decoded:
        return decoded.convert("RGB")


def _gain(img: Image.Image, gain: float, rng: np.random.Generator) -> Image.Image:
    # Gain on gamma-decoded intensity then re-encode: brightening blows highlights to flat white and
    # darkening crushes shadows, as a wrong exposure does, instead of a simple additive shift.
    linear = (_as_float(img) / 255.0) ** 2.2
    return _from_float(np.clip(linear * gain, 0.0, 1.0) ** (1 / 2.2) * 255.0)


def _low_contrast(img: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    arr = _as_float(img)
    mean = arr.mean(axis=(0, 1), keepdims=True)
    return _from_float(mean + factor * (arr - mean))


def _as_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _from_float(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


_APPLY: Mapping[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "blur": _blur,
    "noise": _noise,
    "jpeg": _jpeg,
    "overexposed": _gain,
    "underexposed": _gain,
    "low_contrast": _low_contrast,
}
