"""The admission middleware on plain ASGI calls: a burst read in one go is decided knowing its size."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from serving.admission import Admission, AdmissionMetrics, LoopLag, ServiceRate
from serving.admission_http import AdmissionMiddleware

pytestmark = pytest.mark.unit


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/predict", "query_string": b""}


async def _call(app: Any) -> int:
    """One request through ``app``; its status."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(_scope(), receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


async def _ok(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await asyncio.sleep(0.05)  # admitted requests hold their images while the rest are decided
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_burst_is_decided_after_it_has_counted_itself() -> None:
    """Fifty requests arriving in one loop turn: the first decision already sees all fifty arrivals,
    so the loop's share of the core counts from the first request on."""
    now = [100.0]
    lag = LoopLag(cores=1, min_requests=10, clock=lambda: now[0])
    lag.observe_cpu(wall=0.0, cpu=0.0)
    for _ in range(10):
        lag.arrived()
    lag.observe_cpu(wall=1.0, cpu=0.04)  # measured earlier: 4 ms of loop CPU per request
    assert lag.cpu_per_request == pytest.approx(0.004)
    now[0] += 10  # those arrivals are long past; the burst below arrives at one instant
    seen: list[float] = []
    admission = Admission(
        1.0, 1000, ServiceRate(1, seed_images_per_s=50.0), lambda: 0, AdmissionMetrics(CollectorRegistry())
    )
    admission.loop_lag = lag

    def admit(scope: MutableMapping[str, Any], route: str) -> Any:
        seen.append(lag.load())
        ticket = admission.admit(1)
        ticket.extend(1)
        return ticket

    app = AdmissionMiddleware(_ok, admit=admit, lag=lag)

    async def burst() -> list[int]:
        return await asyncio.gather(*(_call(app) for _ in range(50)))

    statuses = asyncio.run(burst())
    # 50 arrivals within 0.25 s at 4 ms each: 0.8 of the core (the cap) from the first decision on
    assert seen[0] == pytest.approx(0.8)
    # The model's 50 img/s on a fifth of the core: 10 img/s, so only the first ~10 fit the 1 s budget.
    assert statuses.count(200) < 15 and set(statuses) == {200, 429}


def test_without_a_lag_the_middleware_decides_at_once() -> None:
    admission = Admission(
        1.0, 1000, ServiceRate(1, seed_images_per_s=50.0), lambda: 0, AdmissionMetrics(CollectorRegistry())
    )
    app = AdmissionMiddleware(_ok, admission=admission)
    statuses = asyncio.run(_gather(app, 80))
    assert 45 <= statuses.count(200) <= 50  # the model's 50 img/s alone: a second's worth admitted


async def _gather(app: Any, n: int) -> list[int]:
    return await asyncio.gather(*(_call(app) for _ in range(n)))
