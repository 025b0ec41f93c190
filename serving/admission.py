"""Admission by time: refuse a request at once when the server cannot answer it within its budget.

A queue-length cap alone promises nothing about time: 256 images is 0.1 s on a GPU and 4 s on two
CPU cores, and a request refused only after its body was read and decoded has already taken the cores
the admitted ones needed. So the server estimates how long a new request would wait, from the work
ahead of it and the rate the model actually completes images, and refuses it (429, ``Retry-After``)
before decoding when the estimate is over the budget (``serve_max_latency_ms``).

The work ahead is every image the model still has to compute: queued in the batcher, in batches being
computed, and admitted but still being read or decoded (held by a ``Ticket``). The rate is measured
(``ServiceRate``). The image-count cap (``serve_max_queue``) stays as a hard limit.

Knows nothing about HTTP or models: it is tested on plain Python (tests/unit/test_admission.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from serving.decode_cost import DecodeCost, image_format


class Refused(Exception):
    """The request would wait past the budget (``reason`` "latency") or overflow the image-count cap
    ("queue"). ``retry_after_s``: whole seconds (>= 1) until the work ahead of it has drained."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason, self.retry_after_s = reason, retry_after_s


class RetrySchedule:
    """``Retry-After`` for each refusal: refused requests are invited back spread out in time, so that
    they return at about ``invite`` times what the model completes, not all in the same second.

    Under a flood every refused client would otherwise come back a second later, together, be refused
    again, and so on: a thousand clients cost a thousand refusals a second, taken from the cores the
    model needs, for no more answers. Here a refusal is told the estimated wait (when the backlog ahead
    has drained, at least 1 s) plus a random share of the time it would take to let back in what was
    refused in the last ``window_s``, at ``invite`` times the measured rate. 1 by default: back when the
    server could have answered them. Clients that do not return leave no gap, since the clients
    answered send again and new ones arrive; at 2 (measured side by side, docs/benchmarks.md) half of
    those invited back were refused again, and that CPU cost a 1,024-connection flood a tenth of its
    goodput. The spread follows the recent refusals and nothing older, so a flood
    that ended is forgotten within ``window_s`` and clients that gave up hold no place.
    """

    def __init__(
        self,
        invite: float = 1.0,
        max_s: int = 60,
        window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not invite > 0:
            raise ValueError(f"invite must be > 0, got {invite!r}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        self.invite, self.max_s, self.window_s, self.clock, self.rng = invite, max_s, window_s, clock, rng
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (when, images) refused
        self._recent_images = 0
        self._lock = threading.Lock()

    def refused_images_per_s(self) -> float:
        """Images refused in the last ``window_s``, per second."""
        with self._lock:
            self._forget(self.clock())
            return self._recent_images / self.window_s

    def _forget(self, now: float) -> None:
        while self._recent and self._recent[0][0] <= now - self.window_s:
            self._recent_images -= self._recent.popleft()[1]

    def retry_after(self, wait: float | None, n: int, images_per_s: float | None) -> int:
        """Whole seconds (1..max_s) a refused request of ``n`` images should wait before it retries."""
        now = self.clock()
        with self._lock:
            self._forget(now)
            self._recent.append((now, max(1, n)))
            self._recent_images += max(1, n)
            refused = self._recent_images / self.window_s
        base = wait if wait is not None else 0.0
        spread = refused / (self.invite * images_per_s) if images_per_s else 0.0
        return min(self.max_s, _whole_seconds(base + self.rng() * spread))


class CpuPerUnit:
    """CPU seconds per unit of work (an image, a request) as an EWMA over windows of at least
    ``min_units`` units and ``min_s`` seconds. A window longer than ``max_s`` is dropped (idle time or
    light load was in it), so only work done under load counts; unless ``min_busy`` is set and the
    window kept that share of ``cores`` busy: slow work under load (a phone's HEIC photo takes half a
    second of a core to decode, so 32 images take longer than any window), not idle time, which costs
    no CPU. ``per_unit``: None until measured. Not thread-safe: its owner serializes ``add`` and
    ``reading``."""

    def __init__(
        self,
        *,
        min_units: int,
        min_s: float,
        max_s: float,
        alpha: float,
        min_busy: float | None = None,
        cores: int = 1,
    ) -> None:
        self.min_units, self.min_s, self.max_s, self.alpha = min_units, min_s, max_s, alpha
        self.min_busy, self.cores = min_busy, cores
        self.per_unit: float | None = None
        self._units = 0  # all time
        self._start: tuple[float, float, int] | None = None  # (wall, CPU, units) when the window opened

    def add(self, units: int) -> None:
        self._units += units

    def due(self, wall: float) -> bool:
        """Whether a reading at ``wall`` would open or close a window (else it is not worth taking)."""
        if self._start is None:
            return True
        elapsed, units = wall - self._start[0], self._units - self._start[2]
        return elapsed > self.max_s or (units >= self.min_units and elapsed >= self.min_s)

    def reading(self, wall: float, cpu: float) -> int | None:
        """The CPU clock read at ``wall``: opens the first window, closes one that is due. Returns the
        units of the window it closed if that window counted (None: none closed, or dropped)."""
        counted = None
        if self._start is not None:
            if not self.due(wall):
                return None
            wall0, cpu0, units0 = self._start
            busy = (
                self.min_busy is not None
                and self._units > units0
                and (cpu - cpu0) >= self.min_busy * self.cores * (wall - wall0)
            )
            if wall - wall0 <= self.max_s or busy:  # the work kept coming: a window under load
                counted = self._units - units0
                sample = (cpu - cpu0) / counted
                old = self.per_unit
                self.per_unit = sample if old is None else old + self.alpha * (sample - old)
        self._start = (wall, cpu, self._units)
        return counted


class CpuCost:
    """Process CPU seconds per completed image, and so the most images/s the process's ``cores`` can
    complete: decoding, HTTP, refusals and the model all included.

    The model's own rate (``ServiceRate``) counts only its batches. Where decoding and the event loop
    share the model's cores (a CPU server), every image also costs them their share, and the model
    completes fewer images/s than its batches alone would: on one core, a fifth fewer with this
    project's model. Admission that trusts the batches alone lets in more than the budget holds, most
    of all when a flood arrives at once. Measured over windows of at least ``min_images`` completed
    images and ``min_s``; a window longer than ``max_s`` (the server was idle or nearly) is dropped,
    so idle time and light load never count. None until a window under load has been measured.
    One per process, shared by its models: the CPU is the process's.

    ``decodes`` learns what each photo costs to decode (serving/decode_cost.py); over the same windows,
    the decode CPU per completed image is what ``seconds_per_image`` holds of decoding, so that a photo
    is weighed by its decode's excess over what the learned cost already counts.
    """

    def __init__(
        self,
        cores: int,
        *,
        min_images: int = 32,
        min_s: float = 0.5,
        max_s: float = 5.0,
        alpha: float = 0.3,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cores < 1:
            raise ValueError(f"cores must be >= 1, got {cores!r}")
        self.cores, self.cpu_clock, self.clock = cores, cpu_clock, clock
        self._lock = threading.Lock()  # compute threads complete batches side by side
        # A long window counts when it kept the cores at least half busy: slow images under load.
        self._cost = CpuPerUnit(
            min_units=min_images, min_s=min_s, max_s=max_s, alpha=alpha, min_busy=0.5, cores=cores
        )
        self.decodes = DecodeCost()
        self._decode_mark = self.decodes.seconds_total
        self._decode_per_image: float | None = None
        self._cost.reading(clock(), cpu_clock())

    def completed(self, images: int) -> None:
        """``images`` more were computed (any model of the process)."""
        with self._lock:
            self._cost.add(images)
            now = self.clock()
            if self._cost.due(now):  # the CPU clock is read only when a window closes
                decoded = self.decodes.seconds_total
                counted = self._cost.reading(now, self.cpu_clock())
                if counted:  # the window's decode CPU per image, averaged as its CPU per image is
                    sample, old = (decoded - self._decode_mark) / counted, self._decode_per_image
                    self._decode_per_image = (
                        sample if old is None else old + self._cost.alpha * (sample - old)
                    )
                self._decode_mark = decoded

    @property
    def decode_seconds_per_image(self) -> float | None:
        """Of ``seconds_per_image``, what decoding took (over the same windows); None until measured."""
        return self._decode_per_image

    def extra_images(self, blobs: list[bytes]) -> float:
        """The work ``blobs`` bring beyond as many images at the learned cost, in images: each decode's
        estimated excess over the decode CPU per image the learned cost holds. 0 until both are learned
        (each image counts as one, as before)."""
        per_image, typical = self._cost.per_unit, self._decode_per_image
        if per_image is None or per_image <= 0 or typical is None:
            return 0.0
        excess = 0.0
        for blob in blobs:
            cost = self.decodes.estimate(image_format(blob), len(blob))
            if cost is not None:
                excess += max(0.0, cost - typical)
        return excess / per_image

    @property
    def seconds_per_image(self) -> float | None:
        """Process CPU seconds per completed image; None until measured."""
        return self._cost.per_unit

    @property
    def images_per_s(self) -> float | None:
        s = self._cost.per_unit
        return None if s is None else self.cores / max(s, 1e-9)


class ServiceRate:
    """Images/s the model completes: ``streams`` side by side / an EWMA of the seconds per image of
    finished batches.

    Per image, not per batch: the batch sizes vary with the load. Per stream, not wall-clock images/s:
    a quiet server completes few images/s because few arrive, not because it is slow. Under overload
    (the only time the estimate refuses anything) every stream is busy, and the measured batch times
    include what they cost each other. They do not include the time the model's cores spend between
    batches on decoding and HTTP: with ``cpu`` (``CpuCost``), the rate is at most what the process's
    CPU completes, all of that included.

    A batch still running counts as soon as it has run longer per image than the average: a slowdown
    (other processes taking the cores, a long garbage collection) shows at once instead of when the
    slow batch ends, by which time the server would have admitted a backlog it cannot serve in time.
    """

    def __init__(
        self,
        streams: int,
        alpha: float = 0.2,
        seed_images_per_s: float | None = None,
        cpu: CpuCost | None = None,
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if seed_images_per_s is not None and not seed_images_per_s > 0:
            raise ValueError(f"seed_images_per_s must be > 0, got {seed_images_per_s!r}")
        self.streams, self.alpha, self.cpu = streams, alpha, cpu
        # Seconds one image costs one stream; None until a batch finished (or a seed was given).
        self._seconds_per_image = streams / seed_images_per_s if seed_images_per_s else None
        self._lock = threading.Lock()  # compute threads observe side by side
        self._running: dict[int, tuple[float, int]] = {}  # batch key -> (start, images)
        self._next_key = 0

    def observe(self, images: int, seconds: float) -> None:
        """One finished batch of ``images`` that took ``seconds`` of wall time."""
        if images < 1 or not seconds >= 0:
            return
        sample = seconds / images
        with self._lock:
            old = self._seconds_per_image
            self._seconds_per_image = sample if old is None else old + self.alpha * (sample - old)

    def begin(self, images: int) -> int:
        """A batch of ``images`` starts; returns its key for ``end``."""
        with self._lock:
            key, self._next_key = self._next_key, self._next_key + 1
            self._running[key] = (time.monotonic(), images)
        return key

    def end(self, key: int, ok: bool = True) -> None:
        """The batch ``key`` finished; timed into the average only if ``ok`` (a failed batch says
        nothing about speed)."""
        with self._lock:
            start, images = self._running.pop(key)
        if ok:
            self.observe(images, time.monotonic() - start)
            if self.cpu is not None:
                self.cpu.completed(images)

    @property
    def images_per_s(self) -> float | None:
        """None until measured. A batch timed at 0 s (a coarse clock) counts as very fast, not infinite."""
        s = self._seconds_per_image
        if s is None:
            return None
        now = time.monotonic()
        with self._lock:
            running = list(self._running.values())
        # Slower than the average so far (a lower bound on its own seconds per image): the slowest counts.
        s = max([s] + [(now - start) / images for start, images in running if images > 0])
        model = self.streams / max(s, 1e-9)
        cpu = self.cpu.images_per_s if self.cpu is not None else None
        return model if cpu is None else min(model, cpu)


class LoopLag:
    """The event loop's part of a request's wait, which the model's queue does not show: how late the
    loop runs a callback that is due, and the share of the cores it takes from the model to read, decide
    and answer the requests arriving.

    A flood arrives faster than the loop reads it: a thousand requests opened at once are read in bursts
    over a few hundred milliseconds, and every one of them is parsed, and most refused, on the cores the
    admitted requests are decoded and computed on. Estimated from the model's rate alone, the first
    requests admitted then wait for all of that too: on one core a third over the budget. So admission
    divides the model's wait by the share of the cores left to it (``1 - load``: the arrival rate of the
    last ``recent_s``, times the loop thread's CPU per request, over the cores; at most ``max_load``), and
    adds the lag of the latest sample (how long ago the requests it is deciding were read). The CPU per
    request is measured over windows of at least ``min_requests`` requests and ``min_s`` that are not
    longer than ``max_s`` (idle time and light load never count). ``AdmissionMiddleware`` counts each
    request as it arrives and decides it one loop turn later, after the requests read in the same burst
    have counted themselves and the sampler (a timer callback, run ahead of task steps) has run.

    ``seconds`` (the metric ``lightbox_admission_loop_lag_seconds``) is the largest of the last
    ``window`` samples, so a burst shows at once and fades within about a second.
    """

    def __init__(
        self,
        interval_s: float = 0.02,
        window: int = 50,
        cores: int = 1,
        *,
        recent_s: float = 0.25,
        max_load: float = 0.8,
        min_requests: int = 64,
        min_s: float = 0.5,
        max_s: float = 5.0,
        alpha: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= max_load < 1:
            raise ValueError(f"max_load must be in [0, 1), got {max_load!r}")
        self.interval_s, self.cores, self.recent_s, self.max_load = (
            interval_s,
            max(1, cores),
            recent_s,
            max_load,
        )
        self.clock = clock
        self._samples: collections.deque[float] = collections.deque([0.0], maxlen=window)
        self._arrivals: collections.deque[float] = collections.deque()  # within recent_s
        # The loop thread's CPU per request (read on the loop only: no lock).
        self._cost = CpuPerUnit(min_units=min_requests, min_s=min_s, max_s=max_s, alpha=alpha)

    def observe(self, late_s: float) -> None:
        self._samples.append(max(0.0, late_s))

    @property
    def seconds(self) -> float:
        return max(self._samples)

    @property
    def latest(self) -> float:
        return self._samples[-1]

    @property
    def cpu_per_request(self) -> float | None:
        return self._cost.per_unit

    def arrived(self) -> None:
        """One inference request has been read (called on the loop)."""
        now = self.clock()
        self._cost.add(1)
        self._arrivals.append(now)
        self._forget(now)

    def _forget(self, now: float) -> None:
        while self._arrivals and self._arrivals[0] <= now - self.recent_s:
            self._arrivals.popleft()

    def load(self) -> float:
        """The share of the cores the loop takes at the recent arrival rate (0 until measured)."""
        cpu_per_request = self.cpu_per_request
        if not cpu_per_request:
            return 0.0
        self._forget(self.clock())
        per_s = len(self._arrivals) / self.recent_s
        return min(self.max_load, per_s * cpu_per_request / self.cores)

    def observe_cpu(self, wall: float, cpu: float) -> None:
        """A reading of the loop thread's CPU clock at ``wall``: opens or closes a window when due."""
        self._cost.reading(wall, cpu)

    def wait(self, model_wait: float) -> float:
        """A request's wait with the loop's part: the model's, on the share of the cores left to it,
        plus the latest lag."""
        return model_wait / (1 - self.load()) + self.latest

    async def run(self) -> None:
        """Sample on a timer callback (not a task's sleep): it runs as soon as it is due, ahead of the
        task steps of the same loop turn, so a decision sees the lag of the burst it belongs to."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def tick(due: float) -> None:
            nonlocal handle
            now = loop.time()
            self.observe(now - due)
            self.observe_cpu(now, time.thread_time())
            handle = loop.call_at(now + self.interval_s, tick, now + self.interval_s)

        first = loop.time() + self.interval_s
        handle = loop.call_at(first, tick, first)
        try:
            await loop.create_future()  # until cancelled with the app
        finally:
            if handle is not None:
                handle.cancel()


class AdmissionMetrics:
    """Prometheus metrics of admission, in a caller-owned registry (one per app)."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "lightbox_admission") -> None:
        self.admitted = Counter(f"{prefix}_admitted", "Requests admitted", registry=registry)
        self.rejected = Counter(
            f"{prefix}_rejected",
            "Requests refused with 429: latency (estimated wait over the budget) or queue (image cap)",
            ["reason"],
            registry=registry,
        )
        self.estimated_wait = Gauge(
            f"{prefix}_estimated_wait_seconds",
            "Estimated wait of a new one-image request (0 until the service rate is measured)",
            registry=registry,
        )
        self.budget = Gauge(f"{prefix}_budget_seconds", "The latency budget", registry=registry)
        self.service_rate = Gauge(
            f"{prefix}_service_rate_images_per_second",
            "Measured images/s the model completes (0 until the first batch)",
            registry=registry,
        )
        self.reserved = Gauge(
            f"{prefix}_reserved_images", "Images admitted and still being read or decoded", registry=registry
        )
        self.extra = Gauge(
            f"{prefix}_reserved_extra_images",
            "The reserved images' costlier decodes beyond as many typical images, in images",
            registry=registry,
        )
        self.loop_lag = Gauge(
            f"{prefix}_loop_lag_seconds",
            "How late the event loop runs a due callback (largest of the last second)",
            registry=registry,
        )
        self.slow_uploads = Counter(
            f"{prefix}_slow_uploads_total",
            "Requests whose body took longer than the upload grace: their image stopped counting as"
            " work ahead, and they were judged again once the body was in",
            registry=registry,
        )
        self.slack = Gauge(
            f"{prefix}_slack_seconds",
            "What admitted requests took beyond their estimated wait (99th percentile of recent ones):"
            " decoding, the batch fill wait, event-loop delays; kept free within the budget",
            registry=registry,
        )
        # Both reasons from the start: a rate() over a series that appears mid-overload misses its start.
        for reason in ("latency", "queue"):
            self.rejected.labels(reason)


class Admission:
    """The admission decision and the count of images admitted but not yet queued.

    ``queued`` reads the batcher's queue depth. ``reserved`` changes on the event loop (tickets),
    ``computing`` on the compute threads (``computing()``); one lock covers both.
    """

    def __init__(
        self,
        budget_s: float,
        max_queue: int,
        rate: ServiceRate,
        queued: Callable[[], int],
        metrics: AdmissionMetrics | None = None,
        *,
        unmeasured_limit: int | None = None,
        retry: RetrySchedule | None = None,
        batch: int = 1,
    ) -> None:
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue!r}")
        if unmeasured_limit is not None and unmeasured_limit < 1:
            raise ValueError(f"unmeasured_limit must be >= 1, got {unmeasured_limit!r}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch!r}")
        self.budget_s, self.max_queue, self.rate, self.queued = budget_s, max_queue, rate, queued
        # Images a request's own take at the least: a request is answered when its whole batch is, and
        # the streams run their batches side by side (streams x the batch cap).
        self._per_round = rate.streams * batch
        # Images in the server at most until the rate is measured (None: up to max_queue). A server that
        # does not know its speed yet and meets a flood would otherwise fill the queue to its cap, and
        # every request in it would wait seconds; one round of batches measures the rate in milliseconds.
        self.unmeasured_limit = unmeasured_limit
        self.retry = retry or RetrySchedule()
        self.metrics = metrics or AdmissionMetrics(CollectorRegistry())
        self._reserved = 0
        self._computing = 0
        # The work reserved requests bring beyond their image count, in images: photos that will cost
        # more to decode than the typical one (serving/decode_cost.py). Counted in the wait, not the cap.
        self._extra = 0.0
        self._lock = threading.Lock()
        # Tickets reserved at a request's headers whose body is still arriving, oldest first. Their
        # image counts as work ahead for ``upload_grace_s`` only: a client trickling its body (a phone
        # on a poor link, or a slowloris) would otherwise hold a share of the budget for as long as it
        # likes, and every other client would be refused while the cores sit idle. Past the grace its
        # image stops counting, and the request is judged again, on the backlog of the moment, once its
        # body is in (before decoding). A flood's bodies arrive well within it.
        self.upload_grace_s = min(_UPLOAD_GRACE_S, budget_s / 4)
        self._reading: collections.OrderedDict[Ticket, float] = collections.OrderedDict()
        # What admitted requests took beyond the wait estimated when they were admitted. The estimate
        # counts the model's work (at most at the rate the CPU allows: CpuCost); the batch fill wait,
        # event-loop delays and a flood's bursts come on top and grow with the load. Keeping this much
        # of the budget free (a recent 99th percentile, at most half the budget) holds the admitted
        # tail within the budget, not just the average: a request exceeds the budget only when its own
        # overrun exceeds the slack, so the quantile kept is the share of admitted requests that may
        # (the promise is a p99).
        self._overruns: collections.deque[float] = collections.deque(maxlen=_OVERRUN_WINDOW)
        self._slack = 0.0
        self.metrics.budget.set(budget_s)
        self.metrics.slack.set_function(lambda: self._slack)
        # The event loop's part of the wait (LoopLag, one per app, set by the app): its lag and the
        # share of the cores it takes from the model under a flood.
        self.loop_lag: LoopLag | None = None
        self.metrics.loop_lag.set_function(lambda: self.loop_lag.seconds if self.loop_lag else 0.0)
        self.metrics.estimated_wait.set_function(lambda: self.estimate(1) or 0.0)  # read at scrape
        self.metrics.service_rate.set_function(lambda: self.rate.images_per_s or 0.0)
        self.metrics.reserved.set_function(lambda: self._reserved)
        self.metrics.extra.set_function(lambda: self._extra)

    @property
    def reserved(self) -> int:
        """Images admitted and not yet in the batcher's queue (being read or decoded)."""
        return self._reserved

    @property
    def computing(self) -> int:
        """Images in batches being computed."""
        return self._computing

    def ahead(self, held: int = 0) -> int:
        """Images the model must compute before a request holding ``held`` of the reserved ones."""
        self._expire_uploads()
        return self.queued() + self._computing + self._reserved - held

    @property
    def extra(self) -> float:
        """The reserved requests' work beyond their image count, in images (their costlier decodes)."""
        return self._extra

    def _expire_uploads(self, now: float | None = None) -> None:
        """Stop counting the reservations of bodies still arriving past the grace (see __init__)."""
        if not self._reading:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._reading:
                ticket, since = next(iter(self._reading.items()))
                if now - since < self.upload_grace_s:
                    break
                del self._reading[ticket]
                self._reserved -= ticket.held
                self._extra -= ticket.extra
                ticket.held, ticket.extra, ticket.slow = 0, 0.0, True
                self.metrics.slow_uploads.inc()

    def _reading_started(self, ticket: Ticket) -> None:
        with self._lock:
            self._reading[ticket] = time.monotonic()

    def _reading_done(self, ticket: Ticket) -> None:
        with self._lock:
            self._reading.pop(ticket, None)

    def estimate(self, n: int, held: int = 0) -> float | None:
        """Seconds until a request of ``n`` images is computed: the backlog ahead of it and its own
        images at the measured rate. None until the rate is measured.

        Its own images take a whole round of batches however few they are: one image alone on one of
        two streams takes two images' worth of the total rate, and one image in a batch of four is
        answered with the other three. A batch in progress counts whole (it may have just started),
        the batch fill wait (a few ms) not at all, and decoding runs beside the model, so it is left
        out too.
        """
        return _wait(self.ahead(held) + self._extra, n, self._per_round, self.rate.images_per_s)

    def check(
        self,
        n: int,
        held: int = 0,
        extra: float = 0.0,
        held_extra: float = 0.0,
        timeout_s: float | None = None,
    ) -> float | None:
        """Raise Refused unless a request of ``n`` images (``held`` of them already reserved) fits;
        returns its estimated wait (None until the rate is measured). ``extra``: the work its images
        bring beyond ``n`` typical ones, in images (``held_extra`` of it reserved already); it counts in
        the wait, not in the image cap. ``timeout_s``: the request's own, judged against where it is
        below the budget."""
        self._expire_uploads()
        computing = self._computing  # read once: a compute thread may change it meanwhile
        ahead = self.queued() + computing + self._reserved - held
        rate = self.rate.images_per_s
        # estimate(), reading once, with the costlier decodes ahead and the request's own
        wait = _wait(ahead + self._extra - held_extra, n + extra, self._per_round, rate)
        waiting = ahead - computing
        if waiting + n > self.max_queue:
            raise Refused(
                "queue",
                f"{waiting} images waiting + {n} new > max_queue={self.max_queue}",
                self.retry.retry_after(wait, n, rate),
            )
        limit = self.unmeasured_limit
        if wait is None and limit is not None and ahead > 0 and ahead + n > limit:
            raise Refused(
                "latency", f"service rate not measured yet: {ahead} images ahead + {n} new > {limit}", 1
            )
        if wait is not None and self.loop_lag is not None:
            wait = self.loop_lag.wait(wait)  # with the event loop's part: its lag and its share of the cores
        # Never refuse on an idle server: a request bigger than the budget could not do better later.
        slack = self._slack
        budget = self.budget_s if timeout_s is None else min(self.budget_s, timeout_s)
        if wait is not None and wait + slack > budget and ahead > 0:
            which = "budget" if budget == self.budget_s else "the request's timeout"
            raise Refused(
                "latency",
                f"estimated wait {wait:.2f}s"
                + (f" + {slack:.2f}s beyond the model" if slack else "")
                + f" > {which} {budget:.2f}s",
                self.retry.retry_after(wait, n, rate),
            )
        return wait

    @property
    def slack_s(self) -> float:
        """Seconds of the budget kept free for what the estimate leaves out (see ``observe``)."""
        return self._slack

    def observe(self, seconds: float, estimated: float | None) -> None:
        """An admitted request was answered in ``seconds`` after its estimated wait was ``estimated``."""
        if estimated is None or not seconds >= 0:
            return
        with self._lock:
            self._overruns.append(max(0.0, seconds - estimated))
            ordered = sorted(self._overruns)
            tail = ordered[min(len(ordered) - 1, int(_SLACK_QUANTILE * len(ordered)))]
            self._slack = min(tail, self.budget_s / 2)

    def admit(self, n: int = 1) -> Ticket:
        """Reserve ``n`` images for a new request, or raise Refused (counted)."""
        ticket = Ticket(self)
        ticket.extend(n, final=False)
        self._reading_started(ticket)
        return ticket

    def _count_refusal(self, refused: Refused) -> None:
        self.metrics.rejected.labels(refused.reason).inc()

    def refused_by_queue(self, message: str) -> Refused:
        """The batcher's own cap refused a request admitted here (it raced another): count it."""
        refused = Refused(
            "queue", message, self.retry.retry_after(self.estimate(0), 1, self.rate.images_per_s)
        )
        self._count_refusal(refused)
        return refused

    @contextlib.contextmanager
    def computing_batch(self, n: int) -> Iterator[None]:
        """Around one batch computation (a compute thread): counts its images as in progress, and
        times it for the rate when it succeeds (a failed batch says nothing about speed)."""
        with self._lock:
            self._computing += n
        key = self.rate.begin(n)
        ok = False
        try:
            yield
            ok = True
        finally:
            self.rate.end(key, ok)
            with self._lock:
                self._computing -= n

    def _move(self, delta: int, extra: float = 0.0) -> None:
        with self._lock:
            self._reserved += delta
            self._extra += extra


_UPLOAD_GRACE_S = 0.25  # at most (a quarter of the budget, if less): see Admission.__init__
_SLACK_QUANTILE = 0.99  # of recent overruns: the promise is on the admitted p99
_OVERRUN_WINDOW = 256  # admitted requests whose overrun sets the slack: a few seconds under overload


def _wait(ahead: float, n: float, per_round: int, rate: float | None) -> float | None:
    """``ahead`` images, then the request's ``n`` rounded up to whole rounds of ``per_round`` (streams x
    batch cap), at ``rate``."""
    return None if rate is None else (ahead + per_round * math.ceil(n / per_round)) / rate


def _whole_seconds(wait: float | None) -> int:
    """Retry-After: whole seconds until the backlog has drained, at least 1."""
    return 1 if wait is None else max(1, math.ceil(wait))


class Reservation(Protocol):
    """What a request holds between admission and the queue: a ``Ticket``, or one ticket per model of
    a request several models answer (serving.multi.MultiTicket)."""

    def extend(self, n: int, extra: float = 0.0) -> None: ...

    def set_timeout(self, seconds: float) -> None:
        """The request's own timeout: see Ticket.set_timeout."""

    @property
    def deadline(self) -> float | None:
        """When (monotonic) the request's client gives up; None: no timeout of its own."""

    def release(self) -> None: ...

    def answered(self, seconds: float) -> None:
        """The request was answered ``seconds`` after its admission (what the estimate left out)."""


class Ticket:
    """The images one request holds between admission and the batcher's queue.

    ``extend`` grows it once the request's image count is known; ``release`` (idempotent) hands the
    images back as they enter the queue, or when the request fails or its client goes away.
    """

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.held = 0
        self.extra = 0.0  # its images' work beyond ``held`` typical ones, in images
        self.released = False
        self.admitted = False  # its final check passed (the handler extended it to its image count)
        self.estimated: float | None = None  # the wait estimated at that check
        self.judged_at: float | None = None  # when (monotonic)
        self.slow = False  # its body outlasted the upload grace (Admission._expire_uploads)
        self.created = time.monotonic()
        self.timeout_s: float | None = None  # the request's own (its client's), if it said

    def set_timeout(self, seconds: float) -> None:
        """The request's own timeout, counted from its arrival (its client gives up after it, as with
        Triton's ``timeout`` parameter or a proxy's route timeout): the final check judges its wait
        against it where it is below the server's budget, and its images fail uncomputed once it has
        passed (serving.batching.DeadlineExceeded): an answer nobody waits for takes no batch's place."""
        self.timeout_s = seconds

    @property
    def deadline(self) -> float | None:
        return None if self.timeout_s is None else self.created + self.timeout_s

    def extend(self, n: int, extra: float = 0.0, *, final: bool = True) -> None:
        """Hold ``n`` images in all (and ``extra`` images' work beyond them: costlier decodes), or
        release and raise Refused. ``final``: the request's last check, so it counts as admitted."""
        adm = self.admission
        if self.released:
            raise RuntimeError("ticket already released")
        if final:  # the body is in: judged now on the backlog of the moment, with what it still holds
            adm._expire_uploads()  # its own too: a slow body on a quiet server, with no check since
            adm._reading_done(self)
        try:
            wait = adm.check(n, self.held, extra, self.extra, self.timeout_s if final else None)
        except Refused as refused:
            adm._count_refusal(refused)
            self.release()
            raise
        adm._move(n - self.held, extra - self.extra)
        self.held, self.extra = n, extra
        if final:
            self.admitted, self.estimated, self.judged_at = True, wait, time.monotonic()
            adm.metrics.admitted.inc()

    def answered(self, seconds: float) -> None:
        if self.admitted:
            if self.slow and self.judged_at is not None:
                # Its client's own upload time is no overrun of the server's: counted from the check
                # made once the body was in.
                seconds = time.monotonic() - self.judged_at
            self.admission.observe(seconds, self.estimated)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._reading_done(self)
            self.admission._move(-self.held, -self.extra)
            self.held, self.extra = 0, 0.0
