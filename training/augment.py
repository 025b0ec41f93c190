"""Augmentations that leave the labels true, for fine-tuning the backbone on images.

The labels here *are* image defects (blur, noise, JPEG blocking, exposure, contrast, colour: see
``lightbox.distortions``) and a score that falls with them. An augmentation that blurs, adds noise,
re-encodes, or shifts brightness, contrast or colour would change what the image's labels say, so no
such op exists here at all: only geometric ops, kept mild enough that the statistics that define the
defects (``training.model.image_stats``: sharpness, noise, exposure, colourfulness) stay put. The
dataset's settings list which of them are safe for it (``augment_ops``; default: horizontal flip and
a mild crop). Pure: Pillow + numpy, a seeded ``numpy.random.Generator``, no global random state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lightbox.imaging import to_model_input

# Every op there is. Each is geometric: it moves pixels, it never changes their values' statistics much.
OPS: tuple[str, ...] = ("hflip", "crop", "resize")
DEFAULT_OPS: tuple[str, ...] = ("hflip", "crop")
# Ops that would change a label, named so that a setting asking for one is refused with the reason
# rather than with "unknown op".
LABEL_CHANGING: dict[str, str] = {
    "blur": "blurry / the score",
    "noise": "noisy / the score",
    "jpeg": "jpeg_artifacts / the score",
    "brightness": "overexposed, underexposed / the score",
    "contrast": "low_contrast / the score",
    "colour": "colourfulness / the score",
    "vflip": "content (an upside-down photo is another photo)",
    "rotate": "content, and it blurs (resampling)",
}
# At strength 1: the crop keeps at least 95% of each side, the resize stretches one axis by at most 5%.
# Measured at 10%, on the bundled photos: a double resample moved the noise statistic 0.08 and sharpness
# 0.075 (the mildest blur level moves sharpness ~0.11, the mildest noise level the noise statistic
# ~0.05), and a 10% crop of a photo with a black border moved mean luma 0.055 (one exposure level).
# tests/unit/test_augment.py holds the bounds as a property.
MAX_CROP = 0.05
MAX_RESIZE = 0.05


@dataclass(frozen=True)
class AugmentPolicy:
    """Which ops may run, and how hard (0: none, 1: the mild maxima above)."""

    ops: tuple[str, ...] = DEFAULT_OPS
    strength: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        for op in self.ops:
            if op in LABEL_CHANGING:
                raise ValueError(f"augmentation {op!r} would change the label {LABEL_CHANGING[op]}")
            if op not in OPS:
                raise ValueError(f"unknown augmentation {op!r}; expected some of {', '.join(OPS)}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"augmentation strength must be in [0, 1], got {self.strength}")


@dataclass(frozen=True)
class Augmented:
    pixels: np.ndarray  # uint8 [3, 224, 224]: the model's input contract
    applied: tuple[str, ...]  # the ops that ran, in order (a subset of the policy's ops)


def augment(img: Image.Image, policy: AugmentPolicy, rng: np.random.Generator) -> Augmented:
    """A decoded RGB image -> the model input after the policy's ops (each drawn from ``rng``)."""
    applied: list[str] = []
    s = policy.strength
    if "crop" in policy.ops and s > 0:
        w, h = img.size
        keep = 1.0 - MAX_CROP * s * float(rng.random())
        cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        applied.append("crop")
    if "resize" in policy.ops and s > 0:
        # A small change of scale along one axis, folded into the one resample to the model's input (a
        # separate resize would resample twice, which softens the image: the "blurry" label, and it
        # measurably moved the noise and sharpness statistics).
        w, h = img.size
        keep = 1.0 - MAX_RESIZE * s * float(rng.random())
        if rng.random() < 0.5:
            cw, ch = max(1, round(w * keep)), h
        else:
            cw, ch = w, max(1, round(h * keep))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        applied.append("resize")
    if "hflip" in policy.ops and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        applied.append("hflip")
    return Augmented(to_model_input(img), tuple(applied))


def policy_from(ops: Sequence[str], strength: float) -> AugmentPolicy:
    """The policy a trial runs: the dataset's safe ops at the trial's strength."""
    return AugmentPolicy(tuple(ops), float(strength))
