"""What the importer learns from a photo's bytes: its content id, its format, its upright size and a
perceptual hash. Decoding goes through lightbox.imaging (the same upright RGB pixels the model sees).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lightbox.imaging import FORMAT_EXTENSIONS as EXTENSIONS
from lightbox.imaging import (
    OPENED_FORMATS,
    ImageDecodeError,
    check_header_size,
    decode_image,
    error_line,
    upright_size,
)


@dataclass(frozen=True)
class PhotoInfo:
    image_id: str  # sha256 of the bytes, 16 hex digits
    ext: str
    width: int  # upright (after EXIF orientation)
    height: int
    phash: str  # 64-bit DCT perceptual hash, 16 hex digits


def content_id(data: bytes) -> str:
    return id_of_digest(hashlib.sha256(data).hexdigest())


def id_of_digest(sha256_hex: str) -> str:
    """The image id of bytes whose sha256 (hex) is already known: a camera JPEG is megabytes, and
    hashing it twice costs as much as decoding it at reduced size."""
    return sha256_hex[:16]


def inspect(data: bytes, *, max_pixels: int, min_side: int) -> PhotoInfo:
    """Check and describe one photo; ImageDecodeError (with the reason) for anything unusable."""
    import imagehash  # imported here: only the import stage needs it

    if not data:
        raise ImageDecodeError("empty file")
    try:
        header = Image.open(io.BytesIO(data), formats=OPENED_FORMATS)  # (see OPENED_FORMATS)
    except Exception as exc:  # Pillow raises many types for garbage; all mean "not an image"
        raise ImageDecodeError(
            f"not an image in an accepted format ({', '.join(OPENED_FORMATS)}): {error_line(exc)}"
        ) from None
    with header:
        ext = EXTENSIONS[str(header.format)]  # only OPENED_FORMATS open (MPO through the JPEG plugin)
        # Both limits before anything else reads the file: a PNG's EXIF can sit behind its pixel data.
        check_header_size(*header.size, max_pixels)
        try:
            w, h = upright_size(header)
        except Exception as exc:  # a damaged EXIF block or file: the full decode below says which
            raise ImageDecodeError(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None
    img = decode_image(data, max_pixels=max_pixels, min_side=min_side)  # the full decode: truncation shows
    return PhotoInfo(content_id(data), ext, w, h, str(imagehash.phash(img)))


def near_duplicate_pairs(hashes: list[str], max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every i < j whose 64-bit hashes differ in at most ``max_distance`` bits.

    One vectorised row at a time: memory stays O(N) and 10,000 photos take about a second.
    """
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    pairs = []
    for i in range(len(values) - 1):
        d = np.bitwise_count(np.bitwise_xor(values[i + 1 :], values[i]))
        for j in np.flatnonzero(d <= max_distance):
            pairs.append((i, i + 1 + int(j), int(d[j])))
    return pairs
