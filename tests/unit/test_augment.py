"""Augmentation never changes a label: no op outside the safe list runs, and the statistics that define
the defects (sharpness, noise, exposure, colourfulness) stay within a small tolerance."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lightbox import distortions
from lightbox.dataset import photo_sources, procedural_scene
from lightbox.feature_schema import STAT_NAMES
from lightbox.imaging import to_model_input
from training.augment import DEFAULT_OPS, LABEL_CHANGING, OPS, AugmentPolicy, augment
from training.decoded import MIN_SIDE, reduce_for_cache
from training.model import image_stats

# Absolute bounds on each defect statistic's move (image_stats units). The mildest blur level moves
# sharpness ~0.11 and the mildest noise level the noise statistic ~0.05 (measured on the bundled photos):
# augmentation stays under half of that. Exposure and colourfulness move with *what* a crop keeps (a
# photo with a black border, a colour wheel): bounded by the crop's 5%, under a tagged exposure level.
TOLERANCE = {"sharpness": 0.04, "noise": 0.025, "brightness": 0.05, "luma_p50": 0.06, "colourfulness": 0.08}


@functools.cache
def _sources() -> list[Image.Image]:
    photos = [img for _, img, _ in photo_sources()]
    scenes = [procedural_scene(seed, 320)[0] for seed in range(3)]
    out = []
    for img in photos + scenes:
        img = img.copy()
        img.thumbnail((320, 320))  # the dataset stores images at image_max_side (320)
        out.append(img)
    return out


@functools.cache
def _full_size() -> list[Image.Image]:
    """The bundled photos at their own sizes (300 to 1,411 pixels a side) and scenes at 1,024: a user's
    photos, which the decode cache keeps box-reduced (training/decoded.py)."""
    return [img for _, img, _ in photo_sources()] + [procedural_scene(seed, 1024)[0] for seed in range(2)]


def _stats(pixels: np.ndarray) -> dict[str, float]:
    values = image_stats(torch.from_numpy(pixels[None]).float())[0].tolist()
    return dict(zip(STAT_NAMES, values, strict=True))


def _assert_labels_hold(img: Image.Image, augmented: np.ndarray) -> None:
    """Every defect statistic of ``augmented`` within its bound of the image's own model input."""
    before, after = _stats(to_model_input(img)), _stats(augmented)
    moved = {k: abs(after[k] - before[k]) for k in TOLERANCE}
    assert all(moved[k] <= TOLERANCE[k] for k in TOLERANCE), moved


def _label_cases(sources: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The examples both label properties draw: one of ``sources`` images, perhaps distorted, then any
    safe augmentations at any strength."""
    cases = given(
        source=st.integers(0, sources - 1),
        kind=st.sampled_from((None, *distortions.KINDS)),
        level=st.integers(1, 5),
        ops=st.lists(st.sampled_from(OPS), unique=True),
        strength=st.floats(0.0, 1.0),
        seed=st.integers(0, 2**32 - 1),
    )
    limits = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    return lambda test: limits(cases(test))


@_label_cases(13)  # _sources()
def test_augmentation_never_changes_a_label(
    source: int, kind: str | None, level: int, ops: list[str], strength: float, seed: int
) -> None:
    img = _sources()[source % len(_sources())]
    if kind is not None:
        img = distortions.apply(img, kind, level, np.random.default_rng(seed))
    out = augment(img, AugmentPolicy(tuple(ops), strength), np.random.default_rng(seed))
    assert set(out.applied) <= set(ops)  # nothing outside the safe list ever runs
    assert out.pixels.shape == (3, 224, 224) and out.pixels.dtype == np.uint8
    _assert_labels_hold(img, out.pixels)


@_label_cases(12)  # _full_size()
def test_augmenting_the_kept_pixels_never_changes_a_label(
    source: int, kind: str | None, level: int, ops: list[str], strength: float, seed: int
) -> None:
    """Fine-tuning augments what the decode cache kept, not the decoded image: the labels hold against
    the model input of the image itself, with the same bounds."""
    img = _full_size()[source % len(_full_size())]
    if kind is not None:
        img = distortions.apply(img, kind, level, np.random.default_rng(seed))
    kept = reduce_for_cache(img)
    assert min(kept.shape[:2]) >= min(MIN_SIDE, *img.size[::-1])
    out = augment(Image.fromarray(kept), AugmentPolicy(tuple(ops), strength), np.random.default_rng(seed))
    _assert_labels_hold(img, out.pixels)


def test_no_ops_is_the_plain_model_input() -> None:
    img = _sources()[0]
    out = augment(img, AugmentPolicy((), 1.0), np.random.default_rng(0))
    assert out.applied == () and np.array_equal(out.pixels, to_model_input(img))


def test_the_same_seed_gives_the_same_pixels() -> None:
    img, policy = _sources()[1], AugmentPolicy(OPS, 1.0)
    a, b = (augment(img, policy, np.random.default_rng(5)) for _ in range(2))
    assert a.applied == b.applied and np.array_equal(a.pixels, b.pixels)


@pytest.mark.parametrize("op", sorted(LABEL_CHANGING))
def test_a_label_changing_op_is_refused_with_the_label(op: str) -> None:
    with pytest.raises(ValueError, match="would change the label"):
        AugmentPolicy((op,), 0.5)


def test_unknown_ops_and_strengths_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentPolicy(("sharpen",), 0.5)
    with pytest.raises(ValueError, match="strength"):
        AugmentPolicy(DEFAULT_OPS, 1.5)
