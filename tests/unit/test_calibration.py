"""The batch cap the server measures for itself at start: the rule, the measurement, the wiring."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lightbox.settings import Settings
from serving.calibration import BatchRate, calibrate, measure_batch_rates, pick_batch_size
from serving.runtime import DEFAULT_MAX_BATCH
from serving.server import sized_for


def _rates(**img_s: float) -> list[BatchRate]:
    """Rates as measured: each batch's pass takes batch / rate."""
    return [BatchRate(int(k[1:]), v, int(k[1:]) / v * 1000) for k, v in img_s.items()]


def test_the_largest_batch_at_the_best_rate_wins() -> None:
    # CPU with two streams on TorchScript: batch 1 is the fastest per image by far.
    assert pick_batch_size(_rates(b1=91.5, b2=81.9, b4=62.8, b8=43.3)) == 1
    # ONNX Runtime on one core: a flat curve; within 3% of the best, the fuller batch amortizes the
    # server's own work per batch. Batch 8 is out of the tie (62.5 < 0.97 x 68.7).
    assert pick_batch_size(_rates(b1=64.9, b2=68.7, b4=67.5, b8=62.5)) == 4
    # GPU-like: the rate climbs until the device is full, then flattens.
    assert pick_batch_size(_rates(b1=100, b8=700, b16=1300, b32=1400, b64=1420)) == 64
    assert pick_batch_size(_rates(b1=100, b8=700, b16=1300, b32=1400, b64=1420), good_enough=0.9) == 64
    # Bulk scoring asks for the best rate alone (good_enough=1.0).
    assert pick_batch_size(_rates(b1=100, b8=700, b16=1300, b32=1420, b64=1400), good_enough=1.0) == 32


def test_a_batch_whose_pass_outlasts_its_share_of_the_budget_is_not_a_candidate() -> None:
    gpu = _rates(b1=100, b8=700, b16=1300, b32=1400, b64=1420)  # passes of 10, 11, 12, 23 and 45 ms
    assert pick_batch_size(gpu, max_batch_ms=40) == 32
    assert pick_batch_size(gpu, max_batch_ms=20) == 16
    assert pick_batch_size(gpu, max_batch_ms=5) == 1  # none fits: the smallest, the least waiting


def test_the_rule_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no batch size"):
        pick_batch_size([])
    with pytest.raises(ValueError, match="good_enough"):
        pick_batch_size(_rates(b1=1.0), good_enough=0)


def _device_full_at_8(batch: np.ndarray) -> None:
    """A stand-in device: one pass costs the same up to 8 images, then grows with the batch."""
    time.sleep(0.004 * max(1.0, len(batch) / 8))


def test_measurement_finds_where_the_device_fills() -> None:
    rates = measure_batch_rates(_device_full_at_8, (1, 4, 8, 16, 32), seconds=0.1)
    by_batch = {r.batch: r.img_s for r in rates}
    assert list(by_batch) == [1, 4, 8, 16, 32]
    assert by_batch[8] > 5 * by_batch[1]
    # Full from 8 on: 8, 16 and 32 run at one rate, and a pass of 4 ms is all a 6 ms share allows.
    assert pick_batch_size(rates, max_batch_ms=6) == 8


def test_each_size_keeps_its_best_round() -> None:
    calls = {"n": 0}

    def slow_at_first(batch: np.ndarray) -> None:
        calls["n"] += 1
        time.sleep(0.012 if calls["n"] <= 8 else 0.003)  # the first round shares the machine

    once = measure_batch_rates(slow_at_first, (1,), seconds=0.05)[0]
    calls["n"] = 0
    best = measure_batch_rates(slow_at_first, (1,), seconds=0.05, rounds=2)[0]
    assert best.img_s > 2 * once.img_s


def test_side_by_side_streams_are_measured_together() -> None:
    one = measure_batch_rates(_device_full_at_8, (8,), streams=1, seconds=0.1)[0]
    two = measure_batch_rates(_device_full_at_8, (8,), streams=2, seconds=0.1)[0]
    assert two.img_s > 1.5 * one.img_s  # the stand-in sleeps, so two threads overlap fully


def test_measurement_stops_at_the_first_batch_out_of_memory() -> None:
    def predict(batch: np.ndarray) -> None:
        if len(batch) >= 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        _device_full_at_8(batch)

    rates = measure_batch_rates(predict, (1, 8, 16, 32, 64), seconds=0.05)
    assert [r.batch for r in rates] == [1, 8, 16]


def test_other_failures_are_not_swallowed() -> None:
    def broken(batch: np.ndarray) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        measure_batch_rates(broken, (1,), seconds=0.05)
    with pytest.raises(RuntimeError, match="no batch size fits"):
        calibrate(lambda b: (_ for _ in ()).throw(MemoryError()), "cpu", 1, seconds=0.05)


class _CountingPredictor:
    """A Predictor's surface for sized_for: records the batch sizes it was asked to run."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def predict(self, batch: np.ndarray) -> None:
        self.sizes.append(len(batch))
        _device_full_at_8(batch)

    def warmup(self, batch_sizes: tuple[int, ...]) -> None:
        self.sizes += list(batch_sizes)


@pytest.fixture
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("keep_torch_threads")
def test_server_start_calibrates_only_when_no_cap_is_set(tmp_path: Path) -> None:
    measured = _CountingPredictor()
    settings = sized_for(Settings(project_dir=tmp_path), measured)  # type: ignore[arg-type]
    assert settings.serve_max_batch_size == 8  # the stand-in's best rate among the CPU candidates 1, 2, 4, 8
    assert {1, 2, 4, 8} <= set(measured.sizes)

    fixed = _CountingPredictor()
    settings = sized_for(Settings(project_dir=tmp_path, serve_max_batch_size=3), fixed)  # type: ignore[arg-type]
    assert settings.serve_max_batch_size == 3 and set(fixed.sizes) == {1, 3}  # warm-up only

    # A pass of 1.5 ms per image: every batch runs at the same rate, and only the budget holds the cap
    # down (a tenth of 90 ms: batch 4's 6 ms fits, batch 8's 12 ms does not).
    per_image = _CountingPredictor()
    per_image.predict = lambda batch: time.sleep(0.0015 * len(batch))  # type: ignore[method-assign]
    settings = sized_for(Settings(project_dir=tmp_path, serve_max_latency_ms=90), per_image)  # type: ignore[arg-type]
    assert settings.serve_max_batch_size == 4

    table = _CountingPredictor()
    settings = sized_for(Settings(project_dir=tmp_path, serve_calibrate=False), table)  # type: ignore[arg-type]
    cap = DEFAULT_MAX_BATCH["cpu"]
    assert settings.serve_max_batch_size == cap and set(table.sizes) == {1, cap}
