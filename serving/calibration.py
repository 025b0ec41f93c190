"""Pick the batch cap by measuring the device: the smallest batch that reaches near-peak images/s.

Why measure instead of a fixed table: the best batch depends on the device and on how many batches run
side by side. On the 2-core CPU of docs/benchmarks.md, with one single-thread batch per core, batch 1
ran 75.2 img/s, batch 2 65.2, batch 4 54.6 and batch 8 46.4 (two streams' activations outgrow the
caches; other runs ranked 1 and 2 the other way round); a GPU needs dozens of images per pass
before it is busy.
Past the knee a bigger batch only adds latency, so the rule takes the smallest batch within
``GOOD_ENOUGH`` of the best rate.
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
# A batch within 10% of the best rate is as good: the smaller one answers sooner.
GOOD_ENOUGH = 0.9


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


def pick_batch_size(rates: Sequence[BatchRate], good_enough: float = GOOD_ENOUGH) -> int:
    """The smallest batch whose images/s is within ``good_enough`` of the best one measured."""
    if not rates:
        raise ValueError("no batch size was measured")
    if not 0 < good_enough <= 1:
        raise ValueError(f"good_enough must be in (0, 1], got {good_enough}")
    best = max(r.img_s for r in rates)
    return min(r.batch for r in rates if r.img_s >= good_enough * best)


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
    batch_for: Callable[[int], np.ndarray] = example_batch,
) -> list[BatchRate]:
    """Images/s of ``predict`` per batch size, with ``streams`` threads each running its own batches as
    the server's concurrent batches do. Stops at the first size the device has no memory for."""
    rates = []
    with concurrent.futures.ThreadPoolExecutor(streams, thread_name_prefix="calibrate") as pool:
        for n in batch_sizes:
            batch = batch_for(n)
            try:
                list(pool.map(predict, [batch] * streams))  # warm-up: each thread once
                deadline = time.perf_counter() + seconds

                def loop(_: int, batch: np.ndarray = batch, deadline: float = deadline) -> int:
                    done = 0
                    while done == 0 or time.perf_counter() < deadline:
                        predict(batch)
                        done += 1
                    return done

                start = time.perf_counter()
                count = sum(pool.map(loop, range(streams)))
                elapsed = time.perf_counter() - start
            except MemoryError:
                break
            except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is a RuntimeError
                if not _out_of_memory(exc):
                    raise
                _release_cuda_cache()
                break
            rates.append(BatchRate(n, count * n / elapsed, elapsed * streams / count * 1000))
    return rates


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
) -> Calibration:
    """Measure the candidates for ``device`` ("cpu", "cuda") and pick the batch cap."""
    sizes = candidates or BATCH_CANDIDATES.get(device, BATCH_CANDIDATES["cpu"])
    rates = measure_batch_rates(predict, sizes, streams=streams, seconds=seconds)
    if not rates:
        raise RuntimeError(f"no batch size fits the device ({device}); the smallest tried was {min(sizes)}")
    return Calibration(tuple(rates), pick_batch_size(rates), streams)
