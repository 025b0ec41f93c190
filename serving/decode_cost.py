"""What a photo will cost to decode, known from its bytes before decoding: its format (the first bytes)
and its size, at the CPU seconds per byte each format's decodes took so far on this server.

Admission counts every image as one image's work, at the process's CPU per image learned from the
traffic served (serving/admission.CpuCost). A 12 MP phone HEIC costs 27 times a 12 MP JPEG (the JPEG
decodes at a reduced size), a 5 MB camera JPEG fifty times a 100 kB one: a burst of them after small
photos was admitted on the small ones' cost until the average caught up, seconds later, and its answers
came past the budget. Weighed here, such an image counts for the work it brings from the first request:
its decode beyond the typical image's, in images of the learned CPU per image.

Learned per format from every decode (one decode is enough to know a format), as a moving average of
seconds per encoded byte (the decode's wall time: libheif decodes in threads of its own, which no
per-thread CPU clock of the caller sees). A format not decoded yet is estimated from one that was, by
the ratio of their costs per byte measured by bench/decode_formats.py (docs/benchmarks.md); with
nothing decoded yet there is no estimate, and an image counts as one.
"""

from __future__ import annotations

import threading

# Seconds per encoded byte relative to JPEG's (bench/decode_formats.py, the same 12 MP photo in each format,
# docs/benchmarks.md): only to guess a format's cost before its first decode here.
PRIOR_PER_BYTE = {"jpeg": 1.0, "png": 2.9, "heif": 20.0, "avif": 18.0}


def image_format(data: bytes) -> str:
    """The image format by its signature (lower case; "other" when not recognised). Reads 12 bytes."""
    head = data[:12]
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        return "heif"  # heic, heix, mif1, msf1, hevc: pillow-heif's
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    return "other"


class DecodeCost:
    """Seconds per encoded byte by format, a moving average (``alpha``) of the decodes observed, and the
    seconds all decodes took (``seconds_total``: admission's CpuCost reads it per window). Thread-safe:
    decode threads observe side by side."""

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self._per_byte: dict[str, float] = {}
        self._seconds_total = 0.0
        self._lock = threading.Lock()

    def observe(self, fmt: str, nbytes: int, seconds: float) -> None:
        """One successful decode of ``nbytes`` of ``fmt`` that took ``seconds`` seconds."""
        if nbytes <= 0 or not seconds >= 0:
            return
        with self._lock:
            old, sample = self._per_byte.get(fmt), seconds / nbytes
            self._per_byte[fmt] = sample if old is None else old + self.alpha * (sample - old)
            self._seconds_total += seconds

    @property
    def seconds_total(self) -> float:
        """Seconds of every decode observed."""
        return self._seconds_total

    def estimate(self, fmt: str, nbytes: int) -> float | None:
        """Seconds a decode of ``nbytes`` of ``fmt`` will take; None when nothing tells."""
        with self._lock:
            per_byte = self._per_byte.get(fmt)
            if per_byte is None and fmt in PRIOR_PER_BYTE:
                known = [(f, c) for f, c in self._per_byte.items() if f in PRIOR_PER_BYTE]
                if known:  # the measured format nearest JPEG's cost per byte: priors are relative to it
                    base, cost = min(known, key=lambda fc: PRIOR_PER_BYTE[fc[0]])
                    per_byte = cost * PRIOR_PER_BYTE[fmt] / PRIOR_PER_BYTE[base]
        return None if per_byte is None else per_byte * nbytes
