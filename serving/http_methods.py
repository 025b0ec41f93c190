"""HEAD and OPTIONS on every route, as load balancers and uptime monitors send them: HEAD is a GET
without its body (FastAPI's routes answer HEAD with 405), and OPTIONS is answered 204 with ``Allow``
(HAProxy checks with ``OPTIONS /`` or ``OPTIONS *``). A browser's CORS preflight is an OPTIONS too: the
CORS middleware, outside this one, answers it where ``serve_cors_origins`` allows the origin."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match

from serving.metrics import ROUTE_KEY

SERVER_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST"})  # ``OPTIONS *``: the server's, any route


def allowed_methods(routes: Sequence[BaseRoute], scope: dict[str, Any]) -> tuple[set[str], str | None]:
    """(the methods the routes at this path answer, the first one's template); empty: no route has it."""
    methods: set[str] = set()
    template = None
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
            template = template or getattr(route, "path", None)
    if "GET" in methods:
        methods.add("HEAD")
    return (methods | {"OPTIONS"} if methods else methods), template


class HeadAndOptions:
    """Pure ASGI. ``routes``: the app's routes, read per request (a router included later counts)."""

    def __init__(self, app: Any, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        method = scope.get("method") if scope["type"] == "http" else None
        if method == "OPTIONS":
            template: str | None
            if scope.get("path") == "*" or scope.get("raw_path") == b"*":
                allowed, template = set(SERVER_METHODS), "*"
            else:
                allowed, template = allowed_methods(self.routes(), scope)
            if allowed:
                scope[ROUTE_KEY] = template  # the request metrics' route label
                allow = ", ".join(sorted(allowed)).encode()
                headers = [(b"allow", allow), (b"content-length", b"0")]
                await send({"type": "http.response.start", "status": 204, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        if method != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False

        async def headers_only(message: dict) -> None:
            # The GET's headers (its Content-Length included, as HEAD promises), never its body.
            nonlocal ended
            if message["type"] == "http.response.body":
                if ended:
                    return
                ended, message = True, {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        # Served as the GET it stands for, in a scope of its own: the server reads the request's (still
        # HEAD) to send no body. The route the router named there goes back for the request metrics.
        as_get = dict(scope, method="GET")
        try:
            await self.app(as_get, receive, headers_only)
        finally:
            if "route" in as_get:
                scope["route"] = as_get["route"]
