"""Pick the batch cap by measuring the device: the fullest batch at the best images/s whose pass fits
the latency budget.

Why measure instead of a fixed table: the best batch depends on the device, the runtime and how many
batches run side by side. On the 2-core CPU of docs/benchmarks.md, TorchScript with one single-thread
batch per core ran batch 1 at 75.2 img/s and batch 8 at 46.4 (two streams' activations outgrow the
caches); ONNX Runtime on one core runs batches 1 to 8 within a few percent of each other; a GPU needs
dozens of images per pass before it is busy.

Why not the smallest batch near the best rate: the cap only binds when requests queue. Below
saturation the batcher takes what is queued, so batches stay small whatever the cap; at saturation the
images/s is what admission (serving.admission) lets in under the budget, and the server's own work per
batch (hand-offs, stacking, answers), which a bare ``predict`` loop does not see, favours the fuller
batch. Measured side by side on one core: ONNX Runtime served 0.80 of the model alone at cap 1 (what a
smallest-within-10% rule picked from its flat curve) and 0.84 at cap 4. So among the batches within
``GOOD_ENOUGH`` of the best rate (the same within the measurement's noise) the largest wins, and a
batch whose pass takes more than ``BUDGET_SHARE`` of the latency budget is not a candidate.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lightbox.imaging import MODEL_INPUT_SIZE

# Sizes tried at server start, by device type. CPU stops at 8: larger ones were slower per image in every
# measurement so far and each costs a second of start-up.
BATCH_CANDIDATES: dict[str, tuple[int, ...]] = {
    "cpu": (1, 2, 4, 8),
    "cuda": (1, 4, 8, 16, 32, 64, 128, 256),
}
# A batch within 3% of the best rate is as good (0.3 s measurements move by that much between runs).
GOOD_ENOUGH = 0.97
# A batch's pass may take at most this share of the latency budget: a request that arrives as a full
# batch starts waits a whole pass before its own.
BUDGET_SHARE = 0.1
# Each candidate measured this many times, the best kept: a measurement is only ever slowed (by other
# work on the machine), never sped up, so the best of a few is the nearest to the device's own rate.
ROUNDS = 2


@dataclass(frozen=True)
class BatchRate:
    batch: int
    img_s: float
    batch_ms: float  # wall time of one batch while ``streams`` batches run side by side


@dataclass(frozen=True)
class Calibration:
    rates: tuple[BatchRate, ...]
    chosen: int
    streams: int

    def summary(self) -> str:
        table = ", ".join(f"{r.batch}: {r.img_s:.1f}" for r in self.rates)
        return f"max batch {self.chosen} (img/s by batch with {self.streams} side by side: {table})"


def pick_batch_size(
    rates: Sequence[BatchRate], good_enough: float = GOOD_ENOUGH, max_batch_ms: float | None = None
) -> int:
    """The largest batch whose images/s is within ``good_enough`` of the best one measured, among the
    batches whose pass takes at most ``max_batch_ms`` (the smallest batch when none does)."""
    if not rates:
        raise ValueError("no batch size was measured")
    if not 0 < good_enough <= 1:
        raise ValueError(f"good_enough must be in (0, 1], got {good_enough}")
    fits = [r for r in rates if max_batch_ms is None or r.batch_ms <= max_batch_ms]
    candidates = fits or [min(rates, key=lambda r: r.batch)]
    best = max(r.img_s for r in candidates)
    return max(r.batch for r in candidates if r.img_s >= good_enough * best)


def example_batch(n: int, seed: int = 0) -> np.ndarray:
    """Random pixels, not zeros: some ops (order statistics, denormals) run faster on constant input."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), dtype=np.uint8)


def measure_batch_rates(
    predict: Callable[[np.ndarray], object],
    batch_sizes: Sequence[int],
    *,
    streams: int = 1,
    seconds: float = 0.3,
    rounds: int = 1,
    batch_for: Callable[[int], np.ndarray] = example_batch,
) -> list[BatchRate]:
    """Images/s of ``predict`` per batch size, with ``streams`` threads each running its own batches as
    the server's concurrent batches do; over ``rounds`` passes through the sizes, the best of each.
    Stops at the first size the device has no memory for."""
    best: dict[int, BatchRate] = {}
    with concurrent.futures.ThreadPoolExecutor(streams, thread_name_prefix="calibrate") as pool:
        sizes = list(batch_sizes)
        for _ in range(rounds):
            for i, n in enumerate(sizes):
                rate = _measure(pool, predict, batch_for(n), streams, seconds)
                if rate is None:  # out of memory: this size and every larger one are out
                    sizes = sizes[:i]
                    break
                if n not in best or rate.img_s > best[n].img_s:
                    best[n] = rate
    return [best[n] for n in sizes]


def _measure(
    pool: concurrent.futures.Executor,
    predict: Callable[[np.ndarray], object],
    batch: np.ndarray,
    streams: int,
    seconds: float,
) -> BatchRate | None:
    """One batch size's rate, or None when the device has no memory for it."""
    try:
        list(pool.map(predict, [batch] * streams))  # warm-up: each thread once
        deadline = time.perf_counter() + seconds

        def loop(_: int) -> int:
            done = 0
            while done == 0 or time.perf_counter() < deadline:
                predict(batch)
                done += 1
            return done

        start = time.perf_counter()
        count = sum(pool.map(loop, range(streams)))
        elapsed = time.perf_counter() - start
    except MemoryError:
        return None
    except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is a RuntimeError
        if not _out_of_memory(exc):
            raise
        _release_cuda_cache()
        return None
    n = len(batch)
    return BatchRate(n, count * n / elapsed, elapsed * streams / count * 1000)


# What torch's allocators say when a batch does not fit (CUDA caching allocator, cuBLAS, CPU).
_OOM_MESSAGES = ("out of memory", "cublas_status_alloc_failed", "can't allocate memory")


def _out_of_memory(exc: RuntimeError) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


def _release_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def calibrate(
    predict: Callable[[np.ndarray], object],
    device: str,
    streams: int,
    *,
    seconds: float = 0.3,
    candidates: Sequence[int] | None = None,
    max_batch_ms: float | None = None,
    rounds: int = ROUNDS,
) -> Calibration:
    """Measure the candidates for ``device`` ("cpu", "cuda") and pick the batch cap; ``max_batch_ms``:
    the longest pass a batch may take (``BUDGET_SHARE`` of the server's latency budget)."""
    sizes = candidates or BATCH_CANDIDATES.get(device, BATCH_CANDIDATES["cpu"])
    rates = measure_batch_rates(predict, sizes, streams=streams, seconds=seconds, rounds=rounds)
    if not rates:
        raise RuntimeError(f"no batch size fits the device ({device}); the smallest tried was {min(sizes)}")
    return Calibration(tuple(rates), pick_batch_size(rates, max_batch_ms=max_batch_ms), streams)
