"""Browser callers from other origins (``serve_cors_origins``): Starlette's CORS middleware, with its
refusals in the app's error format, and the headers a 500 needs to reach the page (a 500 is answered
outside every middleware)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

EXPOSED = ["Retry-After", "Inference-Header-Content-Length"]  # what a page may read of an answer


class Cors(CORSMiddleware):
    """CORS for ``origins`` ("*": any), every method the server has, any request header; ``Retry-After``
    readable, so a page can back off a 429 as told. A refused preflight is ``{"error": ...}`` like every
    other 4xx, saying which setting allows the origin."""

    def __init__(self, app: Any, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=EXPOSED,
            max_age=600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        reason = bytes(answer.body).decode("utf-8", "replace")
        origin = request_headers.get("origin", "")
        return JSONResponse(
            {"error": f"{reason} for {origin!r}: allow it in LIGHTBOX_SERVE_CORS_ORIGINS"},
            status_code=answer.status_code,
            headers={
                k: v for k, v in answer.headers.items() if k.lower() not in ("content-length", "content-type")
            },
        )


def cors_headers(origins: Sequence[str], request_origin: str | None) -> dict[str, str]:
    """The CORS headers of an answer the middleware never sees (a 500) to a page on ``request_origin``."""
    if not request_origin or not origins:
        return {}
    if "*" in origins:
        return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": ", ".join(EXPOSED)}
    if request_origin in origins:
        return {
            "Access-Control-Allow-Origin": request_origin,
            "Access-Control-Expose-Headers": ", ".join(EXPOSED),
            "Vary": "Origin",
        }
    return {}
