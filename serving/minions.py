"""Isolated models ("minions"): a served model that runs in its own worker process.

For a model that needs other dependencies, or must not take the other models down with it (a segfault in
a native runtime, a leak, an OOM kill). The server process still decodes each request once and batches
per model (serving/runtime.py, unchanged); only the forward pass crosses into the worker, as a pickled
uint8 batch over a pipe (about 150 KB per image: docs/benchmarks.md measures the hop).

``IsolatedPredictor`` has the surface of ``training.predictor.Predictor`` that the runtime, the answers
and the hot swap use, so an isolated model is served by the same code as an in-process one. It:

- starts the worker (``spawn``: a fresh interpreter, no copy of the server's threads or CUDA state), which
  builds the model from a picklable ``factory(version)`` (``RegistryLoader(settings, alias).load`` in
  production) and answers on one pipe per concurrent batch;
- answers every call within ``call_timeout_s``: a worker that dies or hangs fails the calls in flight
  (``ApiError`` 503/504, so a merged answer carries that model's error and the others still answer);
- restarts a dead worker with the same version, with backoff, while calls are refused at once (503);
- is closed by the app's lifespan end (no process outlives the app), and retired by a hot swap once the
  batches running on it are done.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import torch
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from serving.runtime import ApiError
from training.model import ModelConfig
from training.predictor import Predictor

log = logging.getLogger(__name__)

# Picklable (a module-level function, a bound method of a picklable object): version -> model. None: the
# factory's own choice (the alias's current version).
Factory = Callable[[str | None], Predictor]


class WorkerFailed(RuntimeError):
    """The worker could not start (its model did not load), or its model raised; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    """What the server needs to know about the worker's model without holding it."""

    name: str
    version: str
    tag_names: tuple[str, ...]
    config: ModelConfig  # has_score, score_range, score_name: the Predictor properties read it
    device: str
    runtime: str

    @classmethod
    def of(cls, p: Predictor) -> ModelInfo:
        return cls(p.name, p.version, p.tag_names, p.config, p.device.type, p.runtime)


# --- the worker process ---------------------------------------------------------------------------------


def _worker_main(conns: list[Connection], factory: Factory, version: str | None, threads: int | None) -> None:
    """The worker's body: load the model, say what it is on the first pipe, then answer each pipe in its
    own thread (the model's forward pass may run in several threads at once, as in the server)."""
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        predictor = factory(version)
    except BaseException as exc:
        _send_error(conns[0], exc)
        return
    conns[0].send(("ready", ModelInfo.of(predictor)))
    answering = [threading.Thread(target=_answer, args=(c, predictor), daemon=True) for c in conns]
    for t in answering:
        t.start()
    for t in answering:
        t.join()


def _answer(conn: Connection, predictor: Predictor) -> None:
    while True:
        try:
            op, arg = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe (or is gone): this stream ends
            return
        if op == "stop":
            return
        try:
            if op == "predict":
                conn.send(("ok", predictor.predict(arg)))
            elif op == "warmup":
                predictor.warmup(arg)
                conn.send(("ok", None))
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # the model's failure is the caller's answer; the worker goes on
            _send_error(conn, exc)


def _send_error(conn: Connection, exc: BaseException) -> None:
    try:
        conn.send(("error", exc))
    except Exception:  # an exception that does not pickle: its type and message still get there
        conn.send(("error", WorkerFailed(f"{type(exc).__name__}: {exc}")))


# --- the server's side ----------------------------------------------------------------------------------


class _Worker:
    """One incarnation of the worker process and its pipes (a free pipe per batch that may run)."""

    def __init__(self, factory: Factory, version: str | None, streams: int, threads: int | None) -> None:
        ctx = mp.get_context("spawn")
        pairs = [ctx.Pipe() for _ in range(streams)]
        self.process: BaseProcess = ctx.Process(
            target=_worker_main,
            args=([child for _, child in pairs], factory, version, threads),
            name="lightbox-minion",
            daemon=True,  # a server that dies without closing does not leave it behind
        )
        self.process.start()
        for _, child in pairs:
            child.close()  # the worker holds them now: its death shows as EOF on ours
        self.conns = [ours for ours, _ in pairs]
        self.free: queue.Queue[Connection] = queue.Queue()
        self.started = time.monotonic()

    def handshake(self, timeout_s: float) -> ModelInfo:
        first = self.conns[0]
        if not wait_any([first, self.process.sentinel], timeout_s) or not first.poll():
            self.kill()
            raise WorkerFailed(
                f"worker exited with {self.process.exitcode} before its model loaded"
                if not self.process.is_alive()
                else f"model not loaded within {timeout_s:.0f} s"
            )
        try:
            kind, payload = first.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise WorkerFailed(f"worker exited with {self.process.exitcode} while loading") from exc
        if kind == "error":
            self.kill()
            raise payload
        for c in self.conns:
            self.free.put(c)
        return payload

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def call(self, op: str, arg: Any, timeout_s: float) -> Any:
        """One request on a free pipe; WorkerFailed/ApiError as the answer says. A pipe whose answer
        did not come (death, timeout) is not reused: the worker is killed and restarted whole."""
        try:
            conn = self.free.get(timeout=timeout_s)
        except queue.Empty:
            raise ApiError(504, f"no free worker stream within {timeout_s:.1f} s") from None
        try:
            conn.send((op, arg))
            if not conn.poll(timeout_s):
                self.kill()  # hung (or far slower than the deadline): the restart is the way out
                raise ApiError(504, f"worker did not answer within {timeout_s:.1f} s; restarting it")
            kind, payload = conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise ApiError(503, "model worker died; restarting it") from exc
        self.free.put(conn)
        if kind == "error":
            raise payload
        return payload

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask each stream to end, then make sure the process is gone."""
        for c in self.conns:
            with contextlib.suppress(OSError, ValueError):
                c.send(("stop", None))
        self.process.join(timeout_s)
        self.kill()

    def kill(self) -> None:
        # Our pipes stay open (another thread may be polling one: closing its fd under it could hand the
        # number to a new file); they read EOF once the process is gone, and close when collected.
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


class IsolatedPredictor(Predictor):
    """A model version served from a worker process.

    A ``Predictor`` by type, so the runtime, the answers and the hot swap serve it unchanged: it sets the
    attributes they read (name, version, tag names, config, device, runtime) from what the worker
    reported, and sends ``predict``/``warmup`` to the worker. It holds no model (no ``model`` attribute)
    and does not call ``Predictor.__init__``, which would build one.
    """

    HEALTHY_AFTER_S = 30.0  # a worker that lived this long died of something new: back to the first delay

    def __init__(
        self,
        factory: Factory,
        version: str | None = None,
        *,
        streams: int = 1,
        threads: int | None = None,
        call_timeout_s: float = 30.0,
        load_timeout_s: float = 600.0,
        backoff_s: tuple[float, float] = (0.2, 30.0),
    ) -> None:
        """Starts the worker and waits until its model is loaded (raises what loading raised).

        ``backoff_s``: (first, longest) wait before a restart; it doubles while new workers die young."""
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.backoff_s = backoff_s
        self._factory, self._streams, self._threads = factory, streams, threads
        self.call_timeout_s, self.load_timeout_s = call_timeout_s, load_timeout_s
        worker = _Worker(factory, version, streams, threads)
        info = worker.handshake(load_timeout_s)
        self.name, self.version, self.tag_names, self.config = (
            info.name,
            info.version,
            info.tag_names,
            info.config,
        )
        self.device = torch.device(info.device)
        self.inner_runtime = info.runtime
        self.runtime = f"{info.runtime} (isolated)"
        self.traced = False
        self._worker: _Worker | None = worker
        self.restarts = 0
        # Why the worker is down, while it is (None: up): its death, then each failed restart's error.
        self.down_reason: str | None = None
        self._closing = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="minion-supervisor", daemon=True)
        self._supervisor.start()

    @property
    def pid(self) -> int | None:
        w = self._worker
        return w.process.pid if w is not None else None

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._call("predict", batch)

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        self._call("warmup", tuple(batch_sizes))

    @property
    def ready(self) -> bool:
        """The worker is up and answers (False while it is restarting, and once closed)."""
        worker = self._worker
        return worker is not None and worker.alive and not self._closing.is_set()

    def health(self) -> dict[str, Any]:
        """The worker's state for /healthz: up, restarting (and why) or closed."""
        state = "closed" if self._closing.is_set() else "up" if self.ready else "restarting"
        reason = None if state == "up" else self.down_reason
        return {"worker": state, "pid": self.pid, "restarts": self.restarts, "reason": reason}

    def _call(self, op: str, arg: Any) -> Any:
        worker = self._worker
        if worker is None or not worker.alive:
            why = "closed" if self._closing.is_set() else "restarting"
            detail = f" ({self.down_reason})" if why == "restarting" and self.down_reason else ""
            raise ApiError(503, f"model {self.name!r} v{self.version} is {why}{detail}", {"Retry-After": "1"})
        return worker.call(op, arg, self.call_timeout_s)

    # Supervision.
    def _supervise(self) -> None:
        delay = self.backoff_s[0]
        while not self._closing.is_set():
            worker = self._worker
            if worker is None:
                return
            wait_any([worker.process.sentinel], 0.25)
            if worker.alive or self._closing.is_set():
                continue
            self._worker = None  # calls are refused at once until the new one is up
            lived = time.monotonic() - worker.started
            worker.kill()
            if lived > self.HEALTHY_AFTER_S:
                delay = self.backoff_s[0]
            self.down_reason = f"worker pid {worker.process.pid} died (exit {worker.process.exitcode})"
            log.error(
                "worker of %s v%s (pid %s) died (exit %s); restarting in %.1f s",
                self.name,
                self.version,
                worker.process.pid,
                worker.process.exitcode,
                delay,
            )
            while not self._closing.wait(delay):
                delay = min(delay * 2, self.backoff_s[1])
                try:
                    fresh = _Worker(self._factory, self.version, self._streams, self._threads)
                    fresh.handshake(self.load_timeout_s)
                except Exception as exc:
                    self.down_reason = f"restart failed: {_one_line(exc)}"
                    self._log_failed_restart(exc, delay)
                    continue
                if self._closing.is_set():
                    fresh.stop()
                    return
                self._worker = fresh
                self.down_reason = None
                self.restarts += 1
                log.info("worker of %s v%s restarted (pid %s)", self.name, self.version, fresh.process.pid)
                break

    def _log_failed_restart(self, exc: Exception, delay: float) -> None:
        """A known error (lightbox.errors.known_error: the version's files refused, the model gone from the
        registry) or the worker's own failure is one line, each attempt; anything else a traceback."""
        from lightbox.errors import known_error

        if isinstance(exc, WorkerFailed) or known_error(exc) is not None:
            log.error(
                "restarting the worker of %s v%s failed: %s; next try in %.1f s",
                self.name,
                self.version,
                _one_line(exc),
                delay,
            )
        else:
            log.exception("restarting the worker of %s v%s failed", self.name, self.version)

    def close(self) -> None:
        """Stop supervising and stop the worker (the app's lifespan end). Idempotent."""
        self._closing.set()
        self._supervisor.join(10)
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def retire(self, grace_s: float = 30.0) -> None:
        """Close once the batches running on this version are done (a hot swap replaced it), in the
        background: at most ``grace_s`` later."""

        def when_idle() -> None:
            worker = self._worker
            deadline = time.monotonic() + grace_s
            while worker is not None and worker.free.qsize() < len(worker.conns):
                if time.monotonic() > deadline or not worker.alive:
                    break
                time.sleep(0.05)
            self.close()

        threading.Thread(target=when_idle, name="minion-retire", daemon=True).start()

    def __repr__(self) -> str:
        return (
            f"IsolatedPredictor({self.name!r}, version={self.version!r}, device={self.device}, "
            f"{self.inner_runtime}, pid={self.pid})"
        )


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class WorkerMetrics:
    """An isolated model's worker in Prometheus, read at scrape time from the runtime's current version
    (a hot swap brings a new worker): ``lightbox_model_worker_up`` (1/0), ``..._restarts``, and while it
    is down ``lightbox_model_worker_down_info{reason}``."""

    def __init__(self, registry: Any, predictor: Callable[[], Predictor]) -> None:
        self.predictor = predictor
        registry.register(self)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        p = self.predictor()
        if not isinstance(p, IsolatedPredictor):
            return
        health = p.health()
        up = health["worker"] == "up"
        yield GaugeMetricFamily("lightbox_model_worker_up", "The isolated model's worker answers", float(up))
        yield GaugeMetricFamily(
            "lightbox_model_worker_restarts", "Restarts of the isolated model's worker", p.restarts
        )
        down = GaugeMetricFamily(
            "lightbox_model_worker_down_info", "Why the isolated model's worker is down", labels=["reason"]
        )
        if not up:
            down.add_metric([health["reason"] or health["worker"]], 1.0)
        yield down


def worker_down(predictor: Predictor) -> str | None:
    """Why this model cannot answer now (its isolated worker restarting, or closed); None: it can."""
    if not isinstance(predictor, IsolatedPredictor) or predictor.ready:
        return None
    health = predictor.health()
    return f"worker {health['worker']}" + (f": {health['reason']}" if health["reason"] else "")


@dataclass(frozen=True)
class IsolatedLoader:
    """Hot swap of an isolated model: the alias is resolved here (in the server); each new version is
    loaded in a new worker, which serves once it is up and warm (serving/reload.py swaps, then retires
    the old worker)."""

    resolver: Any  # has resolve() -> str (RegistryLoader)
    factory: Factory
    streams: int = 1
    threads: int | None = None
    call_timeout_s: float = 30.0

    @property
    def alias(self) -> str | None:
        return getattr(self.resolver, "alias", None)

    def resolve(self) -> str:
        return str(self.resolver.resolve())

    def load(self, version: str | None = None) -> IsolatedPredictor:
        return IsolatedPredictor(
            self.factory,
            version,
            streams=self.streams,
            threads=self.threads,
            call_timeout_s=self.call_timeout_s,
        )
