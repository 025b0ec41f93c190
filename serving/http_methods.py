"""HEAD and OPTIONS on every route, as load balancers and uptime monitors send them: HEAD is a GET
without its body (FastAPI's routes answer HEAD with 405), and OPTIONS is answered 204 with ``Allow``
(HAProxy's default health check is ``OPTIONS /``). A browser's CORS preflight is an OPTIONS too: the
CORS middleware, outside this one, answers it where ``serve_cors_origins`` allows the origin."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match


def allowed_methods(routes: Sequence[BaseRoute], scope: dict[str, Any]) -> set[str]:
    """The methods the routes at this path answer (empty: no route has the path)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return methods | {"OPTIONS"} if methods else methods


class HeadAndOptions:
    """Pure ASGI. ``routes``: the app's routes, read per request (a router included later counts)."""

    def __init__(self, app: Any, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        method = scope.get("method") if scope["type"] == "http" else None
        if method == "OPTIONS":
            allowed = allowed_methods(self.routes(), scope)
            if allowed:
                allow = ", ".join(sorted(allowed)).encode()
                headers = [(b"allow", allow), (b"content-length", b"0")]
                await send({"type": "http.response.start", "status": 204, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        if method == "HEAD":
            scope = dict(scope, method="GET")

            async def headers_only(message: dict) -> None:
                # The GET's headers (its Content-Length included, as HEAD promises), never its body.
                if message["type"] == "http.response.body":
                    message = {"type": "http.response.body", "body": b"", "more_body": False}
                    if sent_end:
                        return
                    sent_end.append(True)
                await send(message)

            sent_end: list[bool] = []
            await self.app(scope, receive, headers_only)
            return
        await self.app(scope, receive, send)
