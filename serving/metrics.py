"""Prometheus metrics of one serving app, in the app's own registry (tests build many apps per process).

The batcher's metrics (queue depth, batch sizes, batch latency, rejections) live in batching.py and are
registered into the same registry; this module adds the HTTP and model-version side.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The scope key under which a middleware that answers before the router names the route template.
ROUTE_KEY = "lightbox.route"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpMetrics:
    """Requests by route and status: the app's, however many models answer behind it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "lightbox_http_requests", "HTTP requests", ["route", "method", "status"], registry=registry
        )
        self.request_latency = Histogram(
            "lightbox_http_request_latency_seconds",
            "HTTP request latency, first byte in to last byte out",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )


class ServingMetrics(HttpMetrics):
    """One model's runtime: its HTTP side (used when it is the app's only model) and its model side."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.images = Counter("lightbox_images", "Images scored", ["protocol"], registry=registry)
        self.model_info = Gauge(
            "lightbox_model_info",
            "The model version being served (value 1)",
            ["name", "version"],
            registry=registry,
        )
        self.max_batch = Gauge(
            "lightbox_batch_max_size",
            "Largest batch the batcher forms",
            registry=registry,
        )
        self.swaps = Counter("lightbox_model_swaps", "Hot swaps to a new model version", registry=registry)
        self.reload_failures = Counter(
            "lightbox_model_reload_failures", "Failed attempts to load a new model version", registry=registry
        )

    def set_model(self, name: str, version: str, previous: tuple[str, str] | None = None) -> None:
        if previous is not None and previous != (name, version):
            self.model_info.remove(*previous)
        self.model_info.labels(name, version).set(1)


class RequestMetricsMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware overhead): counts requests by route template and status."""

    def __init__(self, app: Any, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The router stores the matched route in the scope; its template keeps label cardinality fixed.
            # A request refused by admission never reaches the router: the middleware names its route.
            route = scope.get("route")
            template = getattr(route, "path", None) or scope.get(ROUTE_KEY) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(template).observe(time.perf_counter() - start)
