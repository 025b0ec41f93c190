"""Reading request bodies: a size limit enforced while streaming, a compressed body inflated within it;
images from multipart, JSON (base64) or raw bodies, and the parameters sent beside them."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lightbox.settings import Settings
from serving.body_codecs import BodyError, content_codings, image_from_base64, inflate
from serving.runtime import ApiError

RAW_CONTENT_TYPES = ("application/octet-stream",)
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away: no one reads the answer


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int, timeout_s: float = 60.0) -> bytes:
    """The whole body, refusing (413) past ``limit`` bytes without reading the rest, and (408) when it
    has not arrived within ``timeout_s``. Both close the connection: the unread rest of the body must
    not be taken for the next request. A client gone mid-upload is a 499 (nobody reads it), not an
    error of the server. A gzip or deflate body (Content-Encoding) comes back inflated, within the same
    ``limit``; another coding is a 415."""
    close = {"Connection": "close"}
    try:
        codings = content_codings(request.headers.get("content-encoding"))
    except BodyError as exc:
        raise ApiError(exc.status, str(exc), close) from None
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"invalid Content-Length: {declared!r}", close)
        if int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes is over the limit of {limit}", close)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"body is over the limit of {limit} bytes", close)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, f"the body did not arrive within {timeout_s:g}s ({size} bytes came)", close
        ) from None
    except ClientDisconnect:
        raise ApiError(CLIENT_CLOSED, "the client closed the connection before its body arrived") from None
    body = b"".join(chunks)
    if not codings:
        return body
    try:
        # In a thread: inflating 20 MB takes the loop's every other request for tens of milliseconds.
        return await asyncio.to_thread(inflate, body, codings, limit)
    except BodyError as exc:
        raise ApiError(exc.status, str(exc)) from None


@dataclass(frozen=True)
class Upload:
    """What a /predict request sent: its encoded images, whether as a list (``files``, ``images``: the
    answer is a list too), and a ``threshold`` sent in the body (a form field, a JSON key)."""

    images: list[bytes]
    several: bool
    threshold: float | None = None


def parse_json(body: bytes, what: str) -> Any:
    """``body`` as JSON, or ApiError 400: invalid text, nesting too deep for the parser, a number with
    more digits than Python converts (each a ValueError or RecursionError, never a 500)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(400, f"{what} is not valid JSON: {reason}") from None


# Envoy (and Istio) send every upstream request its route's timeout in this header: behind such a proxy
# each request says when its client gives up without the client doing anything.
PROXY_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
MAX_TIMEOUT_S = 600.0


def request_timeout(request: Request, *given: tuple[str, object, float]) -> float | None:
    """Seconds until the request's client gives up, the least of what it says: the proxy's header (ms)
    and ``given`` (name, value, seconds per unit) of the protocol's own fields; None when none says.
    A value that is no positive number is an ApiError 422 naming it."""
    said = [(PROXY_TIMEOUT_HEADER, request.headers.get(PROXY_TIMEOUT_HEADER), 0.001), *given]
    seconds = []
    for name, value, unit in said:
        if value is None:
            continue
        number = _client_number(value)
        if number is None or number <= 0:
            raise ApiError(422, f"{name} must be a positive number, got {str(value)[:40]!r}")
        seconds.append(min(number * unit, MAX_TIMEOUT_S))
    return min(seconds, default=None)


def _client_number(value: object) -> float | None:
    """A finite number as a client sends it (``0.3``, ``"0.3"``, ``300``); None for anything else (a
    bool, a list, text that is no number, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_threshold(value: object) -> float:
    """A tag threshold as a client sends it (``0.3``, ``"0.3"``): a number from 0 to 1, or ApiError 422."""
    number = _client_number(value)
    if number is None or not 0.0 <= number <= 1.0:
        shown = repr(value)[:40] if isinstance(value, str | int | float) else f"a {type(value).__name__}"
        raise ApiError(422, f"threshold must be a number from 0 to 1, got {shown}")
    return number


async def uploaded_images(request: Request, settings: Settings) -> Upload:
    """The images of a multipart upload, a JSON body or a raw body. Bad requests -> ApiError."""
    ctype = media_type(request)
    body = await read_body(request, settings.serve_max_body_bytes, settings.serve_body_timeout_s)
    if ctype == "multipart/form-data":
        return await _multipart_images(request, body, settings)
    if ctype == "application/json" or ctype.endswith("+json"):
        # In a thread: parsing and decoding megabytes of base64 must not stall the other requests.
        return await asyncio.to_thread(json_images, body, settings.serve_max_images_per_request)
    if ctype == "" or ctype.startswith("image/") or ctype in RAW_CONTENT_TYPES:
        if not body:
            raise ApiError(400, "empty body: expected an encoded image (JPEG, PNG, WebP, ...)")
        return Upload([body], False)
    raise ApiError(
        415,
        f"unsupported content type {ctype!r}: send an image as the raw body (image/*, "
        "application/octet-stream), as multipart/form-data field 'file' (or several 'files'), or as "
        'JSON {"image": "<base64>"} (or "images": [...])',
    )


def json_images(body: bytes, limit: int) -> Upload:
    """``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}``, each plain base64 or a data URL,
    with an optional ``"threshold"``: what a browser or a script that holds no file sends."""
    doc = parse_json(body, "the JSON body")
    if not isinstance(doc, dict):
        raise ApiError(400, 'the JSON body must be an object: {"image": "<base64>"}')
    if ("image" in doc) == ("images" in doc):
        raise ApiError(
            400, f'send one "image" or a list of "images" as base64 text (keys sent: {sorted(doc)[:10]})'
        )
    several = "images" in doc
    texts = doc["images"] if several else [doc["image"]]
    if not isinstance(texts, list) or not texts:
        raise ApiError(400, '"images" must be a non-empty list of base64 strings')
    if len(texts) > limit:
        raise ApiError(413, f"more than {limit} images in one request (the limit)")
    images = []
    for i, text in enumerate(texts):
        where = f'"images"[{i}]' if several else '"image"'
        if not isinstance(text, str):
            raise ApiError(400, f"{where} must be the image as base64 text, got {type(text).__name__}")
        try:
            images.append(image_from_base64(text))
        except BodyError as exc:
            raise ApiError(exc.status, f"{where}: {exc}") from None
    threshold = doc.get("threshold")
    return Upload(images, several, None if threshold is None else parse_threshold(threshold))


async def _multipart_images(request: Request, body: bytes, settings: Settings) -> Upload:
    sent = False

    async def replay() -> dict[str, Any]:  # the body was already read (with its size limit): replay it
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    # The whole body is within serve_max_body_bytes already; a part's own cap (1 MB by default) would
    # only turn a photo sent without a filename into a misleading "part exceeded maximum size".
    limit = settings.serve_max_images_per_request
    _check_multipart_complete(request.headers.get("content-type", ""), body)
    try:
        form = await Request(request.scope, replay).form(
            max_files=limit, max_fields=16, max_part_size=settings.serve_max_body_bytes
        )
    except StarletteHTTPException as exc:
        if "Maximum number of files" in str(exc.detail):
            raise ApiError(413, f"more than {limit} images in one request (the limit)") from None
        raise ApiError(400, f"malformed multipart body: {exc.detail}") from None
    try:
        single, several = form.getlist("file"), form.getlist("files")
        if single and several:
            raise ApiError(400, "send either one 'file' or several 'files', not both")
        if len(single) > 1:
            raise ApiError(400, "several images go in the 'files' field")
        parts = single or several
        if not parts:
            raise ApiError(
                400, f"multipart body has no 'file' or 'files' field (fields: {sorted(form.keys())})"
            )
        blobs = []
        for part in parts:
            blob = await part.read() if isinstance(part, UploadFile) else _binary_field(part)
            if blob is None:
                raise ApiError(
                    400,
                    "the 'file'/'files' parts must hold the image's bytes (as curl -F file=@photo.jpg "
                    "sends them), not text",
                )
            blobs.append(blob)
        threshold = form.get("threshold")
        return Upload(blobs, bool(several), None if threshold in (None, "") else parse_threshold(threshold))
    finally:
        await form.close()


def _check_multipart_complete(content_type: str, body: bytes) -> None:
    """400 for a multipart body that lacks its closing delimiter (``--BOUNDARY--``): a body cut mid-part
    (a client that stopped sending, a proxy's size cut) or not multipart at all. The parser would take
    it for an empty form and the client would read that its 'file' field is missing. Without a boundary
    the parser itself says so."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if boundary and b"--" + boundary + b"--" not in body:
        raise ApiError(
            400,
            f"multipart body is truncated or malformed: it does not end with its closing boundary "
            f"(--{boundary.decode('latin-1')}--); was the upload cut short?",
        )


def _binary_field(value: str) -> bytes | None:
    """The bytes of a part the parser took for a text field because its Content-Disposition has no
    ``filename`` (``requests`` with ``(None, data)``, ``curl -F 'file=<photo.jpg'``, RFC 5987's
    ``filename*`` alone), or None when it is text. Starlette decodes such a part as UTF-8 and, when
    that fails, as Latin-1, which gives the bytes back unchanged: an image is never valid UTF-8, and
    holds control bytes (NUL, 0x89) that no text typed as "café" does."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return None  # UTF-8 text with characters beyond Latin-1
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return None if value.isprintable() else raw
    return None  # ASCII, or UTF-8 text
