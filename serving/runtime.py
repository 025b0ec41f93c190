"""What both HTTP protocols share: decode off the loop, batch, infer, and the swappable current model.

``/predict`` and the Open Inference Protocol endpoints are two thin front ends over one
``InferenceRuntime``; they differ only in how images come in and how answers go out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from lightbox.imaging import ImageDecodeError, ImageTooLarge, preprocess_bytes
from lightbox.settings import Settings
from serving.admission import Admission, AdmissionMetrics, CpuCost, Refused, Reservation, ServiceRate
from serving.batching import BatchConfig, Batcher, BatcherMetrics, DeadlineExceeded, QueueFull
from serving.decode_cost import image_format
from serving.metrics import ServingMetrics
from serving.prediction_metrics import PredictionMetrics
from training.predictor import Predictor


class ApiError(Exception):
    """An answer other than 2xx, with the JSON ``{"error": message}`` body both protocols use."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def overloaded(refused: Refused) -> ApiError:
    return ApiError(
        429, f"server overloaded ({refused}); retry later", {"Retry-After": str(refused.retry_after_s)}
    )


@dataclass(frozen=True)
class Prediction:
    score: float
    tag_probs: np.ndarray  # float32 [K], in predictor.tag_names order
    predictor: Predictor  # the version that computed it (a swap can land between two requests)

    def tags(self, threshold: float) -> list[dict[str, float | str]]:
        names = self.predictor.tag_names
        keep = [(names[i], float(p)) for i, p in enumerate(self.tag_probs) if p >= threshold]
        keep.sort(key=lambda t: t[1], reverse=True)
        return [{"name": n, "confidence": round(c, 6)} for n, c in keep]


# Batch caps by device when start-up calibration is off (serve_calibrate=false) or never ran (an app
# built in process). CPU: with one batch per core on the 2-core benchmark machine, batch 2 cost 1.15x
# batch 1 per image and batch 4 1.38x (two streams' activations outgrow the caches:
# docs/benchmarks.md); 2 keeps a little batching for CPUs where it pays. A GPU needs large batches.
DEFAULT_MAX_BATCH = {"cpu": 2, "cuda": 64}


def max_batch_size(settings: Settings, device: str) -> int:
    """The configured cap, else the measured default for the device type ("cpu", "cuda")."""
    return settings.serve_max_batch_size or DEFAULT_MAX_BATCH.get(device, DEFAULT_MAX_BATCH["cpu"])


# At most this many CPU batches side by side by default; the cores beyond go to each batch's threads.
# A cautious guess, measured only on 2 cores: each batch keeps its own activations in the shared
# caches, and with two of them batch 8 already cost 1.6x per image. On a big machine, measure with
# bench/serving.py and set LIGHTBOX_SERVE_MAX_CONCURRENT_BATCHES.
MAX_CPU_BATCH_STREAMS = 4


@dataclass(frozen=True)
class ComputeLayout:
    """How inference uses the device: batches computed side by side, and torch threads for each."""

    concurrent_batches: int
    torch_threads: int | None  # None: leave torch's own setting alone (GPU: the host threads only launch)


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: the affinity mask (taskset, cpusets), capped by a cgroup CPU quota
    (Kubernetes CPU limits, `docker --cpus`), which the mask does not show. Reads the quota at the root
    of the cgroup mount, which is the container's own in a container with its own cgroup namespace
    (the default on cgroup v2); a quota set on a nested cgroup (systemd CPUQuota=) is not seen."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by the cgroup quota (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None: no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def compute_layout(settings: Settings, device: str, cores: int | None = None) -> ComputeLayout:
    """Settings first, else the measured default for the device type ("cpu", "cuda").

    CPU: one batch per core, each on one torch thread, up to MAX_CPU_BATCH_STREAMS batches; the cores
    left over go to each batch's threads. On the 2-core benchmark machine, at batch 1, two
    single-thread batches side by side ran 3x the images/s of one batch on both cores (75.2 vs 24.9,
    docs/benchmarks.md): this network's many small ops scale poorly inside one forward pass and well
    across passes. CUDA: one batch at a time (the GPU path is unmeasured; see docs/benchmarks.md).
    """
    cores = max(1, cores or usable_cores())
    if device != "cpu":
        return ComputeLayout(settings.serve_max_concurrent_batches or 1, settings.serve_torch_threads)
    return cpu_streams(cores, settings.serve_max_concurrent_batches, settings.serve_torch_threads)


def cpu_streams(cores: int, batches: int | None = None, threads: int | None = None) -> ComputeLayout:
    """The CPU rule of ``compute_layout`` for ``cores`` (the server's, and each bulk-scoring actor's):
    ``batches`` side by side, each on ``threads``; either given is kept."""
    batches = batches or min(max(1, cores), MAX_CPU_BATCH_STREAMS)
    return ComputeLayout(batches, threads or max(1, cores // batches))


def apply_torch_threads(layout: ComputeLayout) -> None:
    """Set torch's intra-op threads for this process (process-wide: call once, in the server's process)."""
    if layout.torch_threads is not None:
        import torch

        torch.set_num_threads(layout.torch_threads)


class InferenceRuntime:
    """Decoding pool, batcher and the current model of one app.

    It sizes its batches side by side from ``compute_layout`` but leaves torch's thread count alone (a
    process-wide setting): ``serving.server.sized_for`` sets it, as `lightbox serve` does; an app built
    some other way should call it (or ``apply_torch_threads``) first.
    """

    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        registry: CollectorRegistry | None = None,
        cpu_cost: CpuCost | None = None,
    ):
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = ServingMetrics(self.registry)
        self._predictor = predictor
        self.metrics.set_model(predictor.name, predictor.version)
        self.layout = compute_layout(settings, predictor.device.type)
        self.config = BatchConfig(
            max_batch_size=max_batch_size(settings, predictor.device.type),
            max_wait_ms=settings.serve_max_wait_ms,
            max_queue=settings.serve_max_queue,
            max_concurrent_batches=self.layout.concurrent_batches,
        )
        self.metrics.max_batch.set(self.config.max_batch_size)
        self.predictions = PredictionMetrics(self.registry, settings.serve_tag_threshold)
        self.batcher: Batcher[np.ndarray, Prediction] = Batcher(
            self._run_batch, self.config, metrics=BatcherMetrics(self.registry)
        )
        # The process's CPU per image, and what each photo will cost to decode by format and size: a
        # costlier one counts for more in the admission estimate from its first request.
        self.cpu = cpu_cost or CpuCost(usable_cores())
        # Admission by time (serving/admission.py): the rate is measured from the first batch on; until
        # then at most one round of batches is let in.
        self.admission = Admission(
            settings.serve_max_latency_ms / 1000,
            settings.serve_max_queue,
            # Bounded by what the process's CPU completes (decode and HTTP beside the model): one
            # CpuCost for all the models of an app (serving.app), else this runtime's own.
            ServiceRate(self.layout.concurrent_batches, cpu=self.cpu),
            lambda: self.batcher.queue_depth,
            AdmissionMetrics(self.registry),
            unmeasured_limit=self.config.max_batch_size * self.layout.concurrent_batches,
            batch=self.config.max_batch_size,
        )
        self._decode_workers = settings.serve_decode_workers or usable_cores()
        self._decode_pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def predictor(self) -> Predictor:
        return self._predictor

    def swap(self, new: Predictor) -> Predictor:
        """Make ``new`` serve the next batch; batches already running finish on the old one."""
        old, self._predictor = self._predictor, new  # one reference store: atomic for every reader
        self.metrics.set_model(new.name, new.version, previous=(old.name, old.version))
        if (old.name, old.version) != (new.name, new.version):
            self.metrics.swaps.inc()
        return old

    def _run_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        predictor = self._predictor  # read once: the whole batch runs on one version
        with self.admission.computing_batch(len(images)):
            scores, tag_probs = predictor.predict(np.stack(images))
        self.predictions.observe(
            predictor.version, predictor.tag_names, predictor.score_range, scores, tag_probs
        )
        return [Prediction(float(s), t, predictor) for s, t in zip(scores, tag_probs, strict=True)]

    async def decode(self, blobs: list[bytes], ticket: Reservation) -> list[np.ndarray]:
        """Encoded images -> model inputs, in parallel in the decode pool. Bad input -> ApiError 400 (413
        past the pixel limit).

        First extends the request's admission ``ticket`` to its image count: 429 before any decoding
        when they would wait past the latency budget."""
        if not blobs:
            raise ApiError(400, "no image in the request")
        limit = self.settings.serve_max_images_per_request
        if len(blobs) > limit:
            raise ApiError(413, f"{len(blobs)} images in one request, over the limit of {limit}")
        extra = self.cpu.extra_images(blobs) if self.settings.serve_weigh_decodes else 0.0
        try:
            ticket.extend(len(blobs), extra)
        except Refused as refused:
            raise overloaded(refused) from None
        decode = functools.partial(self._decode_timed, max_pixels=self.settings.max_pixels)
        pool = self._pool()
        running = [pool.submit(decode, blob) for blob in blobs]
        try:
            results = await asyncio.gather(*map(asyncio.wrap_future, running), return_exceptions=True)
        except asyncio.CancelledError:
            # The client left (serving/disconnect.py): the decodes not started are dropped; the ones
            # running cannot be stopped, and the request keeps its admission until they end, so that
            # the estimate counts the cores they take.
            for job in running:
                job.cancel()
            await asyncio.to_thread(concurrent.futures.wait, running)
            raise
        for i, r in enumerate(results):
            if isinstance(r, ImageDecodeError):
                where = f"image {i}: " if len(blobs) > 1 else ""
                # Too many pixels is too large (413, as for too many bytes), not broken (400).
                raise ApiError(413 if isinstance(r, ImageTooLarge) else 400, f"{where}{r}")
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    def _decode_timed(self, blob: bytes, max_pixels: int) -> np.ndarray:
        """``preprocess_bytes``, its time learned by format and size (a decode thread). Wall time, not
        the thread's CPU clock: libheif decodes in threads of its own, which that clock does not see (a
        12 MP HEIC: 0.07 s of the calling thread's CPU, 0.31 s of the process's and of the wall's)."""
        start = time.perf_counter()
        image = preprocess_bytes(blob, max_pixels=max_pixels)
        self.cpu.decodes.observe(image_format(blob), len(blob), time.perf_counter() - start)
        return image

    async def infer(
        self, images: list[np.ndarray], protocol: str, ticket: Reservation, version: str | None = None
    ) -> list[Prediction]:
        """The images' predictions, all from one model version: ``version`` when given (a request pinned
        to it: 404 once another serves)."""
        # The images leave the ticket as they enter the queue: submit_many queues them before its first
        # await, so no estimate in between counts them twice or not at all.
        ticket.release()
        out = await self._submit(images, ticket)
        # A request of more images than a batch spans several batches, and a hot swap between two of them
        # answered it from two versions under one name (a probe saw v1's and v2's scores for eight copies
        # of one photo). Its images computed by another version than the one serving now run again.
        for attempt in range(3):
            stale = [i for i, p in enumerate(out) if p.predictor is not self._predictor]
            if len({id(p.predictor) for p in out}) == 1:
                break
            if attempt == 2:  # swapped again and again while it ran (swaps are minutes apart in use)
                raise ApiError(
                    503, "the model was swapped while this request ran: retry", {"Retry-After": "1"}
                )
            again = await self._submit([images[i] for i in stale], ticket)
            for i, p in zip(stale, again, strict=True):
                out[i] = p
        served = out[0].predictor.version
        if version is not None and served != version:
            raise ApiError(404, f"model version {version!r} is not loaded (swapped for {served!r} meanwhile)")
        self.metrics.images.labels(protocol).inc(len(images))
        return out

    async def _submit(self, images: list[np.ndarray], ticket: Reservation) -> list[Prediction]:
        try:
            return await self.batcher.submit_many(images, ticket.deadline)
        except QueueFull as exc:
            raise overloaded(self.admission.refused_by_queue(str(exc))) from None
        except DeadlineExceeded as exc:
            # Its own timeout passed in the queue: its client has given up (or will read a 503 now).
            raise ApiError(
                503, f"not computed within the request's timeout ({exc}): retry later", {"Retry-After": "1"}
            ) from None

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        # Decoding gets its own pool so it runs beside inference, never queued behind a batch; Pillow
        # releases the GIL while decoding and resizing, so these threads use real cores.
        if self._decode_pool is None:
            self._decode_pool = concurrent.futures.ThreadPoolExecutor(
                self._decode_workers, thread_name_prefix="decode"
            )
        return self._decode_pool

    async def aclose(self) -> None:
        """Stop batching and decoding (the app's lifespan end); both restart lazily on the next request."""
        await self.batcher.close()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
            self._decode_pool = None
