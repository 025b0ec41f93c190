import io

import numpy as np
import pytest
from PIL import Image

from lightbox.imaging import ImageDecodeError, decode_image, preprocess_bytes


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_model_input_contract() -> None:
    x = preprocess_bytes(_jpeg())
    assert x.shape == (3, 224, 224) and x.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty body"),
        (b"definitely not an image", "not a decodable image"),
        (_jpeg(256, 256)[:1500], "corrupt or truncated"),
    ],
)
def test_bad_bytes_raise_a_typed_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(_jpeg(200, 200), max_pixels=100 * 100)
