"""Image decoding and preprocessing shared by the feature job, training and the server.

One code path turns encoded bytes into the model's input, so that what the model saw in training is
exactly what it sees in serving. Errors are typed so callers can answer 4xx instead of crashing.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from pathlib import PurePosixPath

import numpy as np
import pillow_heif
from PIL import Image, ImageFile, PngImagePlugin

MODEL_INPUT_SIZE = 224

# HEIC is what phones store photos as: without this opener a user's iPhone folder would be "not an
# image" everywhere. libheif applies the HEIF rotation and pillow-heif resets the EXIF orientation to 1,
# so the upright logic below does not turn such a photo twice. AVIF is Pillow's own.
pillow_heif.register_heif_opener()

# The names a folder of photos is listed by (lower case), for the importer and the bulk scorer alike: a
# photo folder also holds sidecars (.json, .xmp, .txt) that are no images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".webp",
    ".heic",
    ".heif",
    ".hif",  # Canon's and Fujifilm's HEIF
    ".avif",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
)


def is_image_name(name: str) -> bool:
    """Whether a file name (or a path, or an s3 key) has one of IMAGE_EXTENSIONS, in any case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def extension(name: str) -> str:
    """The lower-case extension of a file name or key (".cr2"), or "no extension"."""
    return PurePosixPath(name).suffix.lower() or "no extension"


def describe_by_extension(counts: Mapping[str, int], shown: int = 5) -> str:
    """``"6 files (.aae 3, .ini 2, .db 1)"``: what a folder held besides images, most common kinds first."""
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kinds = ", ".join(f"{ext} {n}" for ext, n in top[:shown])
    more = f", {len(top) - shown} more kinds" if len(top) > shown else ""
    total = sum(counts.values())
    return f"{total} file{'s' if total != 1 else ''} ({kinds}{more})"


# Pillow format -> the extension an imported copy gets (MPO, a camera's multi-picture JPEG, opens through
# the JPEG plugin). Only these are opened, everywhere: some other plugins decode every pixel inside
# Image.open (an ICO's embedded PNG), before any size check could refuse a bomb.
FORMAT_EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "BMP": ".bmp",
    "GIF": ".gif",
    "HEIF": ".heic",  # pillow-heif's name for HEIC photos (registered above)
    "AVIF": ".avif",
}
OPENED_FORMATS: tuple[str, ...] = tuple(f for f in FORMAT_EXTENSIONS if f != "MPO")
MAX_IMAGE_SIDE = 16_384  # past this a "photo" is a scan or a bomb; the pixel limit catches the rest

# A PNG's text chunks (Photoshop's XMP history runs to megabytes) are capped at 1 MB by Pillow, which
# refuses the whole photo past that; a photo is what we want, and the body size already bounds them.
PngImagePlugin.MAX_TEXT_CHUNK = 32 * 1024 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 64 * 1024 * 1024

# Pillow's own bomb guard raises a DecompressionBombWarning below its error threshold; we want a hard
# error at *our* limit, checked from the header before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image within our limits (the message says which)."""


class ImageTooLarge(ImageDecodeError):
    """A decodable image over the pixel limit or the maximum side: too large, not broken (the server
    answers 413, as for a body over its byte limit)."""


def decode_image(data: bytes, *, max_pixels: int = 40_000_000, min_side: int = 1) -> Image.Image:
    """Decode encoded bytes to an upright RGB image, refusing empty, truncated, huge or degenerate input.

    Photos as they really come: the EXIF orientation is applied (a phone's portrait shot is stored
    sideways), CMYK, greyscale, 16-bit, palette and alpha images become RGB, and an animated image gives
    its first frame. Training, features and serving all decode here, so they see the same pixels.
    """
    if not data:
        raise ImageDecodeError("empty body: expected an encoded image (JPEG, PNG, WebP, ...)")
    failure = None
    try:
        img = Image.open(io.BytesIO(data), formats=OPENED_FORMATS)
    except Exception as exc:  # Pillow raises many types for garbage; all mean "not an image"
        failure = f"not a decodable image ({', '.join(OPENED_FORMATS)}): {error_line(exc)}"
    if failure is not None:
        raise ImageDecodeError(failure)
    kind = ImageDecodeError
    try:
        return _decode_opened(img, max_pixels, min_side)
    except ImageDecodeError as exc:
        kind, failure = type(exc), str(exc)
    except Exception as exc:
        failure = f"corrupt or truncated image: {error_line(exc)}"
    # Raised out here, with the image closed: an exception raised inside the handler would keep the
    # failed decode's frames (and its partly decoded pixels, hundreds of MB for a truncated 40 MP PNG)
    # alive through its context for as long as a caller holds it, e.g. a request's other images.
    img.close()
    raise kind(failure)


def check_header_size(w: int, h: int, max_pixels: int) -> None:
    """Refuse an image over the pixel limit or the maximum side, from its header's size (before any
    pixel is decoded)."""
    if w * h > max_pixels:
        raise ImageTooLarge(f"image has {w}x{h}={w * h} pixels, over the limit of {max_pixels}")
    if max(w, h) > MAX_IMAGE_SIDE:
        raise ImageTooLarge(f"image is {w}x{h}, over the maximum side of {MAX_IMAGE_SIDE}")


# TIFF tags that tell a camera RAW file: DNG's version tag, or a first image marked reduced-resolution
# (NewSubfileType bit 0) with the full image in a SubIFD, as DNG and Nikon's NEF lay them out.
_DNG_VERSION, _NEW_SUBFILE_TYPE, _SUB_IFDS = 50706, 254, 330


def _refuse_raw(img: Image.Image) -> None:
    """Pillow opens a RAW file's TIFF structure on its first image, a small preview (256x171 in a DNG):
    trained on or scored as the photo, it is a thumbnail, so it is refused saying what to do."""
    if img.format != "TIFF":
        return
    tags = getattr(img, "tag_v2", {})
    if _DNG_VERSION in tags or (int(tags.get(_NEW_SUBFILE_TYPE, 0)) & 1 and _SUB_IFDS in tags):
        raise ImageDecodeError(
            f"a camera RAW file (DNG or alike): only its {img.size[0]}x{img.size[1]} preview could be read; "
            "export the photo as JPEG or TIFF"
        )


def _decode_opened(img: Image.Image, max_pixels: int, min_side: int) -> Image.Image:
    _refuse_raw(img)
    w, h = img.size
    check_header_size(w, h, max_pixels)
    if min(w, h) < min_side:
        raise ImageDecodeError(f"image is {w}x{h}, under the minimum side of {min_side}")
    if img.format == "JPEG" and img.mode in ("RGB", "L", "YCbCr"):
        # Reduced-size JPEG decoding (DCT scaling to 1/2, 1/4, 1/8): libjpeg decodes straight to the
        # smallest scale still >= the model size. Measured on a 640x480 JPEG: 1.15 ms vs 3.2 ms for
        # decode + resize, and the feature job uses the same path, so training sees what serving sees.
        img.draft("RGB", (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if img.format != "HEIF":  # an animated GIF/WebP/PNG: the first frame
            # (HEIF opens on its primary image, the one checked above; 0 may be another). An APNG may
            # carry a default image outside its animation, for viewers without APNG: a browser shows
            # the animation's first frame, so that is the photo.
            animated_png = (
                img.format == "PNG" and img.info.get("default_image") and getattr(img, "n_frames", 1) > 1
            )
            img.seek(1 if animated_png else 0)
        img.load()
    w, h = img.size
    if w * h > max_pixels:  # whatever a plugin decoded, never past the limit
        raise ImageTooLarge(f"image decoded to {w}x{h}={w * h} pixels, over the limit of {max_pixels}")
    orientation = img.getexif().get(_ORIENTATION, 1)
    rgb = to_rgb(img)
    method = _TRANSPOSE.get(orientation)
    return rgb if method is None else rgb.transpose(method)


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def error_line(exc: BaseException) -> str:
    """An exception as one short line: its type and, when it has one, its message."""
    # Pillow names the file object it could not identify ("<_io.BytesIO object at 0x7f...>"): noise.
    text = " ".join(_OBJECT_REPR.sub("", str(exc)).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_ORIENTATION = 0x0112  # the EXIF tag
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose does).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown: the header's size, swapped when the EXIF orientation
    turns it a quarter (read from the header; no pixel is decoded)."""
    w, h = img.size
    if img.format == "TIFF":  # Pillow's TIFF plugin turns the image upright as it opens it
        return w, h
    quarter = {
        Image.Transpose.TRANSPOSE,
        Image.Transpose.ROTATE_270,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
    }
    return (h, w) if _TRANSPOSE.get(img.getexif().get(_ORIENTATION, 1)) in quarter else (w, h)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency composited on white, 16-bit scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's convert("L") clips 16-bit values at 255 (a white image); scale the range instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "F":
        # A float image (a scientific TIFF) is scaled on its finite values: one NaN or inf pixel would
        # make the min and max NaN and the whole image black. Non-finite pixels become black.
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        low, high = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
        scaled = np.where(finite, (arr - low) * (255.0 / max(high - low, 1e-12)), 0.0)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def to_model_input(img: Image.Image, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """RGB image -> uint8 array [3, size, size] (the model's input contract)."""
    resized = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


def preprocess_bytes(
    data: bytes, *, max_pixels: int = 40_000_000, size: int = MODEL_INPUT_SIZE
) -> np.ndarray:
    """Encoded bytes -> model input. Raises ImageDecodeError on bad input."""
    return to_model_input(decode_image(data, max_pixels=max_pixels), size)
