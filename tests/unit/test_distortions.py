from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lightbox import distortions

pytestmark = pytest.mark.unit


@pytest.fixture
def image() -> Image.Image:
    """Mid-grey textured image: edges for blur to soften, headroom both ways for exposure changes."""
    yy, xx = np.mgrid[0:96, 0:128]
    checker = ((xx // 16 + yy // 16) % 2) * 80.0  # coarse: strong blur must not erase it entirely
    base = 80.0 + checker + 0.3 * xx
    arr = np.stack([base, base * 0.9, base * 0.8], axis=-1)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _gray(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float64)


def sharpness(img: Image.Image) -> float:
    """Variance of a 4-neighbour Laplacian: the usual focus measure."""
    g = _gray(img)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def apply(img: Image.Image, kind: str, level: int, seed: int = 0) -> Image.Image:
    return distortions.apply(img, kind, level, np.random.default_rng(seed))


def test_blur_lowers_sharpness_more_at_higher_levels(image: Image.Image) -> None:
    values = [sharpness(image)] + [sharpness(apply(image, "blur", lvl)) for lvl in distortions.LEVELS]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values


def test_noise_adds_high_frequency_energy_and_is_seeded(image: Image.Image) -> None:
    flat = Image.new("RGB", (64, 64), (120, 120, 120))
    values = [sharpness(apply(flat, "noise", lvl)) for lvl in distortions.LEVELS]
    assert values[0] > 0 and all(a < b for a, b in zip(values, values[1:], strict=False)), values
    same = np.array_equal(
        np.asarray(apply(image, "noise", 3, seed=1)), np.asarray(apply(image, "noise", 3, seed=1))
    )
    other = np.array_equal(
        np.asarray(apply(image, "noise", 3, seed=1)), np.asarray(apply(image, "noise", 3, seed=2))
    )
    assert same and not other


def test_overexposure_raises_and_underexposure_lowers_brightness(image: Image.Image) -> None:
    mean = _gray(image).mean()
    over = [_gray(apply(image, "overexposed", lvl)).mean() for lvl in distortions.LEVELS]
    under = [_gray(apply(image, "underexposed", lvl)).mean() for lvl in distortions.LEVELS]
    assert mean < over[0] < over[-1]
    assert mean > under[0] > under[-1]
    # Overexposure clips: at the strongest level a large share of pixels is blown to white.
    assert (np.asarray(apply(image, "overexposed", 5)) == 255).mean() > 0.3


def test_low_contrast_lowers_std_but_keeps_mean(image: Image.Image) -> None:
    g = _gray(image)
    stds = [g.std()] + [_gray(apply(image, "low_contrast", lvl)).std() for lvl in distortions.LEVELS]
    assert all(a > b for a, b in zip(stds, stds[1:], strict=False)), stds
    assert abs(_gray(apply(image, "low_contrast", 5)).mean() - g.mean()) < 3


def test_jpeg_low_quality_differs_and_gets_worse(image: Image.Image) -> None:
    original = np.asarray(image, dtype=np.float64)
    errors = [
        np.abs(np.asarray(apply(image, "jpeg", lvl), dtype=np.float64) - original).mean() for lvl in (1, 5)
    ]
    assert 0 < errors[0] < errors[1]
    data = distortions.jpeg_bytes(image, 5)
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "JPEG"
    assert data == distortions.jpeg_bytes(image, 5)  # fixed encoder settings: same bytes every time


@pytest.mark.parametrize("kind", distortions.KINDS)
def test_every_kind_keeps_size_and_mode_and_leaves_input_alone(image: Image.Image, kind: str) -> None:
    before = np.asarray(image).copy()
    out = apply(image, kind, 3)
    assert out.size == image.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), before)
    assert np.array_equal(np.asarray(image), before)


def test_params_table_covers_every_kind_and_level() -> None:
    assert set(distortions.KINDS) == {"blur", "noise", "jpeg", "overexposed", "underexposed", "low_contrast"}
    assert all(len(row) == len(distortions.LEVELS) for row in distortions.PARAMS.values())


@pytest.mark.parametrize(
    ("kind", "level", "named"), [("blurr", 2, "'blurr'"), ("blur", 0, "0"), ("blur", 6, "6")]
)
def test_bad_kind_or_level_is_a_value_error_naming_it(
    image: Image.Image, kind: str, level: int, named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        apply(image, kind, level)
