"""What a photo will cost to decode, from its format and size, learned per format."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import lightbox.imaging  # noqa: F401  # registers the HEIF and AVIF plugins
from serving.admission import CpuCost
from serving.decode_cost import DecodeCost, image_format


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("HEIF", "heif"),
        ("AVIF", "avif"),
        ("GIF", "gif"),
        ("TIFF", "tiff"),
        ("BMP", "bmp"),
    ],
)
def test_the_format_from_the_first_bytes(fmt: str, name: str) -> None:
    assert image_format(_encoded(fmt)) == name


def test_unknown_bytes_are_other() -> None:
    assert image_format(b"") == "other" and image_format(b"hello world!") == "other"


def test_learned_per_format_and_guessed_for_one_not_decoded_yet() -> None:
    cost = DecodeCost(alpha=0.5)
    assert cost.estimate("jpeg", 1000) is None and cost.seconds_total == 0.0
    cost.observe("jpeg", 100_000, 0.01)  # 1e-7 s a byte
    assert cost.estimate("jpeg", 5_000_000) == pytest.approx(0.5)  # a camera-size JPEG: 50x
    # HEIC not decoded yet: JPEG's cost per byte times their measured ratio.
    assert cost.estimate("heif", 1_000_000) == pytest.approx(1e-7 * 20.0 * 1_000_000)
    assert cost.estimate("webp", 1_000_000) is None  # no ratio known: no guess
    cost.observe("heif", 1_000_000, 0.5)  # measured: its own from now on
    assert cost.estimate("heif", 1_000_000) == pytest.approx(0.5)
    cost.observe("jpeg", 100_000, 0.03)  # a moving average
    assert cost.estimate("jpeg", 100_000) == pytest.approx(0.02)
    cost.observe("png", 0, 1.0)  # nothing to learn from
    assert cost.estimate("png", 10) == pytest.approx(0.02 / 100_000 * 2.9 * 10)


def test_a_photo_weighs_its_decode_beyond_what_the_learned_cost_holds() -> None:
    """The process's CPU per image holds the decodes of the photos it was learned on: a photo counts for
    its decode's excess over that, in images of that cost."""
    wall, cpu = [0.0], [0.0]
    cost = CpuCost(
        1, min_images=2, min_s=0.1, max_s=5.0, alpha=1.0, cpu_clock=lambda: cpu[0], clock=lambda: wall[0]
    )
    small = b"\xff\xd8" + b"\0" * 99_998
    assert cost.extra_images([small]) == 0.0  # nothing learned: each image counts as one
    # A window of 10 images: 0.2 s of CPU, 0.1 s of it decoding 100 kB JPEGs.
    for _ in range(10):
        cost.decodes.observe("jpeg", len(small), 0.01)
    wall[0], cpu[0] = 0.5, 0.2
    cost.completed(10)
    assert cost.seconds_per_image == pytest.approx(0.02)
    assert cost.decode_seconds_per_image == pytest.approx(0.01)
    assert cost.extra_images([small, small]) == pytest.approx(
        0.0, abs=1e-9
    )  # such photos bring nothing beyond the learned cost
    camera = b"\xff\xd8" + b"\0" * 4_999_998
    assert cost.extra_images([camera]) == pytest.approx((0.5 - 0.01) / 0.02)
    heic = b"\0\0\0\x18ftypheic" + b"\0" * 999_988  # not decoded yet: JPEG's cost per byte x 20
    assert cost.extra_images([heic, small]) == pytest.approx((1e-7 * 20 * 1_000_000 - 0.01) / 0.02)
    # Once the traffic is such photos, the learned cost holds their decodes and they weigh nothing extra.
    for _ in range(10):
        cost.decodes.observe("heif", len(heic), 2.0)
    wall[0], cpu[0] = 1.0, 0.2 + 10 * 2.01
    cost.completed(10)
    assert cost.decode_seconds_per_image == pytest.approx(2.0)
    assert cost.extra_images([heic]) == pytest.approx(0.0, abs=1e-9)
