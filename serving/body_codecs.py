"""How clients wrap an image or a request body, undone with limits: a compressed body (Content-Encoding)
and an image as base64 text in JSON (a data URL, wrapped lines, the URL-safe alphabet). Pure: the
HTTP side is serving/uploads.py."""

from __future__ import annotations

import base64
import binascii
import re
import zlib

# Content-Encoding -> zlib's wbits: gzip's header and trailer, or zlib's (RFC 9110's "deflate").
# Triton's and KServe's Python clients compress requests with either (request_compression_algorithm).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ENCODINGS = (*_WBITS, "identity")

# A body is compressed once (twice at most, by a proxy that does it again); and a gzip body is one
# member, or a few concatenated: past these it is an attack on the inflating CPU, not a client.
MAX_CODINGS = 2
MAX_GZIP_MEMBERS = 64

_DATA_URL = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(?:;[^,;]*)*),", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


class BodyError(ValueError):
    """A body or an image that cannot be unwrapped; ``status``: the HTTP status it answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def content_codings(header: str | None) -> list[str]:
    """The codings of a Content-Encoding header, in the order they were applied, less ``identity``.
    Raises BodyError(415) for one this server does not undo (br, zstd, compress)."""
    codings = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    unknown = [c for c in codings if c not in ENCODINGS]
    if unknown:
        raise BodyError(
            415,
            f"unsupported Content-Encoding {unknown[0]!r}: send the body as it is, or compressed with "
            "gzip or deflate",
        )
    codings = [c for c in codings if c != "identity"]
    if len(codings) > MAX_CODINGS:
        raise BodyError(
            415, f"{len(codings)} content codings: send the body compressed once (gzip or deflate)"
        )
    return codings


def inflate(body: bytes, codings: list[str], limit: int) -> bytes:
    """``body`` with its ``codings`` undone, last applied first. Refuses (413) past ``limit`` bytes once
    inflated without inflating the rest: a few kB of gzip can hold gigabytes of zeros."""
    for coding in reversed(codings):
        body = _inflate_one(body, coding, limit)
    return body


def _inflate_one(body: bytes, coding: str, limit: int) -> bytes:
    out: list[bytes] = []
    size, rest, members = 0, body, 0
    wbits = _WBITS[coding]
    if coding == "deflate" and not _zlib_header(body):
        wbits = -zlib.MAX_WBITS  # raw deflate, as some clients send "deflate"
    while rest:  # gzip allows several members one after another (`cat a.gz b.gz`)
        engine = zlib.decompressobj(wbits)
        try:
            chunk = engine.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise BodyError(400, f"the {coding} body is not valid {coding} data: {exc}") from None
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"the {coding} body inflates past the limit of {limit} bytes")
        if not engine.eof:
            raise BodyError(400, f"the {coding} body is cut short: its compressed stream does not end")
        out.append(chunk)
        rest = engine.unused_data
        members += 1
        if rest and not rest.strip(b"\0"):
            break  # zero padding after the last member (tape blocks; gzip -d accepts it too)
        if coding != "gzip" and coding != "x-gzip" and rest:
            raise BodyError(400, f"{len(rest)} bytes follow the end of the {coding} stream")
        if rest and members >= MAX_GZIP_MEMBERS:
            raise BodyError(400, f"the gzip body has more than {MAX_GZIP_MEMBERS} members: send one")
    return b"".join(out)


def _zlib_header(data: bytes) -> bool:
    """Whether ``data`` starts with a zlib header (RFC 1950: deflate method, a checksum of 31)."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def image_from_base64(text: str) -> bytes:
    """The bytes of an image sent as base64 text: plain, as a data URL (``data:image/jpeg;base64,...``,
    what a browser's FileReader gives), wrapped in lines (the ``base64`` command's 76 columns), in the
    URL-safe alphabet, or without its ``=`` padding. Raises BodyError(400) for anything else."""
    head = _DATA_URL.match(text)
    if head is not None:
        params = [p.strip().lower() for p in head.group("params").split(";") if p.strip()]
        if "base64" not in params:
            raise BodyError(400, "a data URL must carry the image as base64 (data:image/jpeg;base64,...)")
        text = text[head.end() :]
    try:
        data = base64.b64decode(text, validate=True)  # the usual case, in one pass over the text
    except (binascii.Error, ValueError):
        data = _lenient_base64(text)
    if not data:
        raise BodyError(400, "holds no image bytes (empty base64)")
    return data


def _lenient_base64(text: str) -> bytes:
    """Base64 with line breaks, the URL-safe alphabet or no padding; BodyError(400) if still not."""
    text = _WHITESPACE.sub("", text)
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BodyError(400, "not valid base64") from None
