"""Reading request bodies: a size limit enforced while streaming; images from multipart or raw bodies."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from lightbox.settings import Settings
from serving.runtime import ApiError

RAW_CONTENT_TYPES = ("application/octet-stream",)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"invalid Content-Length: {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def uploaded_images(request: Request, settings: Settings) -> tuple[list[bytes], bool]:
    """(encoded images, several?) from a multipart upload or a raw body. Bad requests -> ApiError."""
    ctype = media_type(request)
    body = await read_body(request, settings.serve_max_body_bytes)
    if ctype == "multipart/form-data":
        return await _multipart_images(request, body, settings)
    if ctype == "" or ctype.startswith("image/") or ctype in RAW_CONTENT_TYPES:
        if not body:
            raise ApiError(400, "empty body: expected an encoded image (JPEG, PNG, WebP, ...)")
        return [body], False
    raise ApiError(
        415,
        f"unsupported content type {ctype!r}: send an image as the raw body (image/*, "
        "application/octet-stream) or as multipart/form-data field 'file' (or several 'files')",
    )


async def _multipart_images(request: Request, body: bytes, settings: Settings) -> tuple[list[bytes], bool]:
    sent = False

    async def replay() -> dict[str, Any]:  # the body was already read (with its size limit): replay it
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(
        max_files=settings.serve_max_images_per_request + 1, max_fields=16
    )
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
            if not isinstance(part, UploadFile):
                raise ApiError(400, "the 'file'/'files' fields must be file uploads, not text fields")
            blobs.append(await part.read())
        return blobs, bool(several)
    finally:
        await form.close()
