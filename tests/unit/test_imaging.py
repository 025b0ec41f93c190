import io

import numpy as np
import pytest
from PIL import Image

from lightbox.imaging import ImageDecodeError, decode_image, is_image_name, preprocess_bytes
from lightbox.photos import EXTENSIONS, inspect


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


def _sideways(fmt: str) -> bytes:
    """A landscape picture, red on the left, stored with EXIF orientation 6 (a phone held upright)."""
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (220, 20, 20)
    pixels[:, 40:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, exif=exif.tobytes(), quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_formats_decode_upright_like_a_jpeg(fmt: str) -> None:
    jpeg, other = decode_image(_sideways("JPEG")), decode_image(_sideways(fmt))
    assert other.size == jpeg.size == (40, 80)  # turned once, not twice nor never
    a, b = np.asarray(jpeg, np.int16), np.asarray(other, np.int16)
    assert np.abs(a - b).mean() < 8  # the same picture, up to each codec's loss
    info = inspect(_sideways(fmt), max_pixels=10**7, min_side=1)
    assert (info.ext, info.width, info.height) == ({"HEIF": ".heic", "AVIF": ".avif"}[fmt], 40, 80)
    with pytest.raises(ImageDecodeError):
        decode_image(_sideways(fmt)[:300])


def test_image_names_are_matched_in_any_case() -> None:
    assert all(map(is_image_name, ["a.JPG", "s3://b/k/p.heic", "x.HEIF", "y.Avif", "z.jfif"]))
    assert not any(map(is_image_name, ["a.xmp", "b.json", "jpg", "dir.jpg/notes.txt"]))
    assert all(is_image_name(f"x{ext}") for ext in EXTENSIONS.values())  # the importer's copies list too


def test_a_heif_with_several_images_decodes_the_primary_one_it_checked() -> None:
    import pillow_heif

    big, small = Image.new("RGB", (640, 480), (200, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 200))
    heif = pillow_heif.from_pillow(big)
    heif.add_from_pillow(small)
    buf = io.BytesIO()
    heif.save(buf, primary_index=1)  # a burst or an edit: the primary is not the first image
    img = decode_image(buf.getvalue(), max_pixels=64 * 48)  # the limit checked the primary's header
    assert img.size == (64, 48) and img.getpixel((5, 5))[2] > 150
