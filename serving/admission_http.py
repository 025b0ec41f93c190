"""The HTTP side of admission (serving/admission.py): refuse before FastAPI reads, routes or validates.

A pure ASGI middleware reserves one image for each inference request before anything reads its body;
the handler extends the reservation to the request's image count once the body is parsed
(``InferenceRuntime.decode``), and the images go back as they enter the batcher's queue. A refusal is
answered here, in a few lines of ASGI: under overload most requests are refused, and every core spent
on refusing is a core the admitted ones wait for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from serving.admission import Admission, LoopLag, Refused, Reservation
from serving.metrics import ROUTE_KEY
from serving.runtime import overloaded

# Where the middleware leaves the request's ticket for the handler.
TICKET_KEY = "lightbox.admission"

V2_INFER = "/v2/models/{name}/infer"
V2_VERSION_INFER = "/v2/models/{name}/versions/{version}/infer"


def inference_route(method: str, path: str) -> str | None:
    """The route template of an inference request (the ones admission guards), else None."""
    if method != "POST":
        return None
    if path == "/predict":
        return "/predict"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return V2_VERSION_INFER if "/versions/" in path else V2_INFER
    return None


def v2_model_name(path: str) -> str:
    """The model name in a V2 inference path (/v2/models/{name}/...)."""
    return path.split("/")[3]


def query_value(scope: MutableMapping[str, Any], key: str) -> str | None:
    """The last ``key=`` of the request's query string (as Starlette's ``QueryParams.get`` reads it)."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(key)
    return values[-1] if values else None


def ticket_of(scope: MutableMapping[str, Any]) -> Reservation:
    """The ticket the middleware opened for this request."""
    try:
        return scope[TICKET_KEY]
    except KeyError:
        raise RuntimeError("no admission ticket: the app must run behind AdmissionMiddleware") from None


def refusal_response(refused: Refused) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers, body) of the 429, as the app's error handler would write it: ``{"error": ...}``."""
    error = overloaded(refused)
    body = json.dumps({"error": error.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    return headers, body


class AdmissionMiddleware:
    """Pure ASGI: admit one image's worth per inference request or answer 429 at once; release the
    reservation however the request ends (answered, failed, client gone).

    ``admission``: the one model's; or ``admit``, which reserves for the models a request selects
    (serving.multi) and raises Refused when none admits it."""

    def __init__(
        self,
        app: Any,
        admission: Admission | None = None,
        admit: Callable[[MutableMapping[str, Any], str], Reservation] | None = None,
        lag: LoopLag | None = None,
    ) -> None:
        if (admission is None) == (admit is None):
            raise ValueError("give either admission or admit")
        self.app = app
        self.lag = lag
        self.admit: Callable[[MutableMapping[str, Any], str], Reservation] = admit or (
            lambda _scope, _route: admission.admit(1)  # type: ignore[union-attr]
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route = (
            inference_route(scope.get("method", ""), scope.get("path", ""))
            if scope["type"] == "http"
            else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        if self.lag is not None:
            # Count this request as read and decide it one loop turn later: the requests read in the
            # same burst have counted themselves by then, and the lag sampler has run (LoopLag), so
            # the decision knows the flood it is in.
            self.lag.arrived()
            await asyncio.sleep(0)
        try:
            ticket = self.admit(scope, route)
        except Refused as refused:
            scope[ROUTE_KEY] = route  # a refusal never reaches the router that would name it
            headers, body = refusal_response(refused)
            # The body is never read: the server discards it and keeps the connection for the next,
            # unless the client waits for "100 Continue" before sending it: such a client may skip the
            # body and reuse the connection, and the server would read its next request as this body.
            if any(k == b"expect" and v.lower() == b"100-continue" for k, v in scope.get("headers", ())):
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope[TICKET_KEY] = ticket
        start, status = time.monotonic(), 0

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            ticket.release()
        if status == 200:  # what the estimate left out, for the next decisions
            ticket.answered(time.monotonic() - start)
