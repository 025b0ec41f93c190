"""Real photos' oddities through the one decode path (lightbox.imaging), which the import, the server and
bulk scoring share: formats that decode inside Image.open, failed decodes that kept their pixels,
float images with NaN, TIFF orientation, an APNG's hidden default image, a PNG with megabytes of XMP."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from lightbox.imaging import ImageDecodeError, decode_image, preprocess_bytes, upright_size
from lightbox.photos import inspect

pytestmark = pytest.mark.unit


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _grey_png_bomb(side: int) -> bytes:
    """An 8-bit greyscale PNG of side x side zeros, written by hand: a few hundred KB on disk."""
    row = b"\x00" * (side + 1)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _ico_around(png: bytes) -> bytes:
    """One-entry ICO whose directory says 16x16 and whose entry is ``png``: Pillow decodes the PNG
    inside Image.open, before its real size could be checked."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png


def test_an_ico_bomb_named_jpg_is_refused_before_any_pixel_is_decoded(tmp_path) -> None:  # noqa: ANN001
    bomb = tmp_path / "holiday.jpg"
    bomb.write_bytes(_ico_around(_grey_png_bomb(12_000)))  # 144 MP behind a 16x16 directory
    # A fresh process, so its peak memory is the decode's: the whole bomb would take 144 MB or more.
    script = textwrap.dedent(
        f"""
        import resource
        from lightbox.imaging import ImageDecodeError, preprocess_bytes
        from lightbox.photos import inspect
        data = open({str(bomb)!r}, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for call in (preprocess_bytes, lambda d: inspect(d, max_pixels=40_000_000, min_side=1)):
            try:
                call(data)
                print("decoded")
            except ImageDecodeError as exc:
                print(exc)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    serving, importing, grown_kb = out.strip().splitlines()
    assert serving.startswith("not a decodable image (JPEG, PNG") and "decoded" not in out
    assert importing.startswith("not an image in an accepted format")
    assert int(grown_kb) < 60_000, f"the refusal grew the process by {int(grown_kb) // 1024} MB"


def test_formats_the_import_refuses_are_refused_by_the_server_path_too() -> None:
    base = Image.new("RGB", (64, 48), (10, 120, 10))
    for fmt in ("ICO", "PPM", "TGA"):
        buf = io.BytesIO()
        base.save(buf, fmt)
        with pytest.raises(ImageDecodeError, match="not a decodable image"):
            preprocess_bytes(buf.getvalue())
    buf = io.BytesIO()
    Image.new("RGB", (16_385, 8)).save(buf, "PNG")
    with pytest.raises(ImageDecodeError, match="maximum side of 16384"):
        preprocess_bytes(buf.getvalue())


def test_a_failed_decode_keeps_no_pixels_alive() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (600, 800, 3), np.uint8)).save(buf, "PNG")
    truncated = buf.getvalue()[: len(buf.getvalue()) * 9 // 10]
    with pytest.raises(ImageDecodeError, match="corrupt or truncated") as caught:
        decode_image(truncated)
    # No context or cause: nothing chains back to the frames that held the half-decoded image, so a
    # request holding its images' errors (asyncio.gather) holds no pixels.
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_a_float_image_with_one_nan_keeps_its_other_pixels() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (32, 1))
    spoiled = ramp.copy()
    spoiled[0, 0], spoiled[5, 5] = np.nan, np.inf

    def tiff(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a, "F").save(buf, "TIFF")
        return buf.getvalue()

    clean, dirty = (np.asarray(decode_image(tiff(a)), np.int16)[..., 0] for a in (ramp, spoiled))
    assert clean.max() == 255 and dirty.max() == 255  # not a black image
    differ = np.argwhere(clean != dirty)
    assert {tuple(p) for p in differ} <= {(0, 0), (5, 5)} and dirty[0, 0] == 0


def test_a_tiff_turned_by_exif_reports_its_upright_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (480, 360)).save(buf, "TIFF", exif=exif)
    header = Image.open(io.BytesIO(buf.getvalue()))
    assert upright_size(header) == decode_image(buf.getvalue()).size == (360, 480)
    info = inspect(buf.getvalue(), max_pixels=10**7, min_side=1)
    assert (info.width, info.height) == (360, 480)


def test_an_apng_decodes_its_first_animation_frame_not_a_hidden_default_image() -> None:
    frames = [Image.new("RGB", (64, 48), c) for c in ((250, 250, 250), (0, 0, 250))]
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 0, 0)).save(
        buf, "PNG", save_all=True, append_images=frames, default_image=True
    )
    assert decode_image(buf.getvalue()).getpixel((3, 3)) == (250, 250, 250)


def test_a_png_with_megabytes_of_xmp_is_a_photo() -> None:
    info = PngImagePlugin.PngInfo()
    history = "".join(f"<rdf:li>xmp.did:{i:032x}</rdf:li>" for i in range(40_000))  # ~1.5 MB
    info.add_itxt("XML:com.adobe.xmp", history, zip=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, "PNG", pnginfo=info)
    assert decode_image(buf.getvalue()).getpixel((1, 1)) == (200, 10, 10)
    assert inspect(buf.getvalue(), max_pixels=10**7, min_side=1).ext == ".png"


def test_a_camera_raw_file_is_refused_not_read_as_its_preview() -> None:
    """Pillow opens a DNG's TIFF structure on its first image, a 256 px preview: the import had trained on
    that thumbnail (stored as .tif) and the server scored it, with no word. Refused on every path, as
    bulk scoring leaves .dng out by name; an ordinary TIFF still decodes."""
    preview = Image.new("RGB", (256, 192), (90, 120, 30))
    for tags in ({50706: (1, 4, 0, 0)}, {254: 1, 330: (0,)}):  # DNGVersion; a reduced image + SubIFDs
        buf = io.BytesIO()
        preview.save(buf, format="TIFF", tiffinfo=tags)
        with pytest.raises(ImageDecodeError, match="camera RAW file .*256x192 preview.*export the photo"):
            decode_image(buf.getvalue())
        with pytest.raises(ImageDecodeError, match="camera RAW"):
            inspect(buf.getvalue(), max_pixels=40_000_000, min_side=16)
    buf = io.BytesIO()
    preview.save(buf, format="TIFF")
    assert decode_image(buf.getvalue()).size == (256, 192)
