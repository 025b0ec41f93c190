"""The dynamic batcher on plain asyncio: no server, no model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from serving.batching import (
    BatchConfig,
    Batcher,
    BatcherClosed,
    BatcherMetrics,
    BatchSizeMismatch,
    DeadlineExceeded,
    QueueFull,
)

pytestmark = pytest.mark.unit


def _metric(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


class Recorder:
    """A batch function that doubles its inputs and remembers the batches it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return [2 * x for x in items]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch_size", 0),
        ("max_batch_size", -3),
        ("max_batch_size", 2.5),
        ("max_wait_ms", -1.0),
        ("max_wait_ms", float("nan")),
        ("max_queue", 0),
        ("max_queue", True),
        ("max_concurrent_batches", 0),
        ("max_batch_size", "8"),
    ],
)
def test_config_rejects_bad_values_and_names_them(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field) as info:
        BatchConfig(**{field: value})  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


def test_config_accepts_edges() -> None:
    cfg = BatchConfig(max_batch_size=1, max_wait_ms=0, max_queue=1)
    assert (cfg.max_batch_size, cfg.max_wait_ms, cfg.max_queue) == (1, 0, 1)


def test_each_caller_gets_its_own_output() -> None:
    fn = Recorder()

    async def main() -> list[int]:
        b = Batcher(fn, BatchConfig(max_batch_size=8, max_wait_ms=2))
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(50)))
        finally:
            await b.close()

    assert asyncio.run(main()) == [2 * i for i in range(50)]
    assert all(len(batch) <= 8 for batch in fn.batches)
    assert sorted(x for batch in fn.batches for x in batch) == list(range(50))


def test_full_batch_is_cut_without_waiting_for_max_wait() -> None:
    fn = Recorder()

    async def main() -> float:
        b = Batcher(fn, BatchConfig(max_batch_size=4, max_wait_ms=10_000))
        t0 = time.monotonic()
        await asyncio.gather(*(b.submit(i) for i in range(8)))
        elapsed = time.monotonic() - t0
        await b.close()
        return elapsed

    assert asyncio.run(main()) < 2.0  # max_wait is 10 s: only reaching max size can explain this
    assert [len(batch) for batch in fn.batches] == [4, 4]


def test_partial_batch_waits_max_wait() -> None:
    fn = Recorder()

    async def main() -> float:
        b = Batcher(fn, BatchConfig(max_batch_size=100, max_wait_ms=80))
        t0 = time.monotonic()
        await b.submit(1)
        elapsed = time.monotonic() - t0
        await b.close()
        return elapsed

    elapsed = asyncio.run(main())
    assert 0.07 <= elapsed < 1.0
    assert fn.batches == [[1]]


def test_deadline_follows_the_oldest_request() -> None:
    """A later arrival joins the oldest's batch and does not extend its deadline."""
    fn = Recorder()

    async def main() -> tuple[float, float]:
        b = Batcher(fn, BatchConfig(max_batch_size=100, max_wait_ms=150))
        t0 = time.monotonic()
        first = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(b.submit(2))
        await asyncio.gather(first, second)
        elapsed = time.monotonic() - t0
        await b.close()
        return elapsed, 0.1

    elapsed, _ = asyncio.run(main())
    assert fn.batches == [[1, 2]]
    assert 0.14 <= elapsed < 0.24  # ~150 ms after the first, not 150 ms after the second


def test_zero_wait_runs_immediately() -> None:
    fn = Recorder()

    async def main() -> None:
        b = Batcher(fn, BatchConfig(max_batch_size=32, max_wait_ms=0))
        assert await b.submit(3) == 6
        await b.close()

    asyncio.run(main())


def test_batch_function_runs_off_the_event_loop() -> None:
    """A slow (blocking) batch must not stop the loop from doing other work meanwhile."""
    fn = Recorder(delay_s=0.3)

    async def main() -> int:
        b = Batcher(fn, BatchConfig(max_batch_size=4, max_wait_ms=0))
        ticks = 0
        job = asyncio.create_task(b.submit(1))
        while not job.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await b.close()
        return ticks

    assert asyncio.run(main()) >= 10
    assert threading.main_thread().name not in fn.threads


def test_output_size_mismatch_fails_every_caller_and_batcher_goes_on() -> None:
    calls = 0

    def drops_one(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        return [2 * x for x in items][: -1 if calls == 1 else None]

    async def main() -> None:
        b = Batcher(drops_one, BatchConfig(max_batch_size=3, max_wait_ms=10_000))
        results = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, BatchSizeMismatch) for r in results), results
        assert "2 outputs for 3 inputs" in str(results[0])
        assert await asyncio.gather(*(b.submit(i) for i in range(3))) == [0, 2, 4]
        await b.close()

    asyncio.run(main())


def test_failed_batch_reaches_each_caller_and_batcher_goes_on() -> None:
    registry = CollectorRegistry()

    def fails_on_seven(items: list[int]) -> list[int]:
        if 7 in items:
            raise RuntimeError("boom on 7")
        return [2 * x for x in items]

    async def main() -> None:
        b = Batcher(
            fails_on_seven,
            BatchConfig(max_batch_size=2, max_wait_ms=10_000),
            metrics=BatcherMetrics(registry),
        )
        results = await asyncio.gather(b.submit(7), b.submit(8), return_exceptions=True)
        assert [type(r) for r in results] == [RuntimeError, RuntimeError]
        assert all("boom on 7" in str(r) for r in results)
        assert await asyncio.gather(b.submit(1), b.submit(2)) == [2, 4]
        await b.close()

    asyncio.run(main())
    assert _metric(registry, "lightbox_batcher_failed_batches_total") == 1


def test_queue_full_is_raised_immediately() -> None:
    registry = CollectorRegistry()
    release = threading.Event()

    def blocked(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def main() -> None:
        cfg = BatchConfig(max_batch_size=1, max_wait_ms=0, max_queue=2)
        b = Batcher(blocked, cfg, metrics=BatcherMetrics(registry))
        running = asyncio.create_task(b.submit(0))  # taken into the (blocked) batch
        while b.queue_depth or not fn_started(registry):
            await asyncio.sleep(0.005)
        waiting = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.02)
        assert b.queue_depth == 2
        t0 = time.monotonic()
        with pytest.raises(QueueFull, match="max_queue=2"):
            await b.submit(3)
        assert time.monotonic() - t0 < 0.05
        with pytest.raises(QueueFull):
            await b.submit_many([4])
        release.set()
        assert await asyncio.gather(running, *waiting) == [0, 1, 2]
        await b.close()

    asyncio.run(main())
    assert _metric(registry, "lightbox_batcher_rejections_total") == 2
    assert _metric(registry, "lightbox_batcher_queue_depth") == 0


def fn_started(registry: CollectorRegistry) -> bool:
    return _metric(registry, "lightbox_batcher_in_flight_batches") >= 1


def test_submit_many_is_all_or_nothing() -> None:
    release = threading.Event()

    def blocked(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def main() -> None:
        b = Batcher(blocked, BatchConfig(max_batch_size=1, max_wait_ms=0, max_queue=3))
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(b.submit_many([1, 2]))
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFull, match="2 waiting \\+ 2 new"):
            await b.submit_many([3, 4])
        assert b.queue_depth == 2  # nothing of the refused request was queued
        release.set()
        assert await first == 0
        assert await second == [1, 2]
        await b.close()

    asyncio.run(main())


def test_cancelled_callers_are_not_computed() -> None:
    fn = Recorder()

    async def main() -> None:
        b = Batcher(fn, BatchConfig(max_batch_size=10, max_wait_ms=100))
        gone = asyncio.create_task(b.submit(99))
        stays = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.01)
        assert b.queue_depth == 2
        gone.cancel()
        await asyncio.sleep(0.01)
        # Out of the queue at once, not when the batch is cut: admission must not count it as work ahead.
        assert b.queue_depth == 1
        assert await stays == 2
        await b.close()

    asyncio.run(main())
    assert fn.batches == [[1]]


def test_concurrent_batches_overlap_when_allowed() -> None:
    fn = Recorder(delay_s=0.2)

    async def main() -> float:
        b = Batcher(fn, BatchConfig(max_batch_size=1, max_wait_ms=0, max_concurrent_batches=2))
        t0 = time.monotonic()
        await asyncio.gather(b.submit(1), b.submit(2))
        elapsed = time.monotonic() - t0
        await b.close()
        return elapsed

    assert asyncio.run(main()) < 0.35  # two 0.2 s batches side by side, not one after the other


def test_metrics_record_batches() -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        b = Batcher(
            Recorder(), BatchConfig(max_batch_size=4, max_wait_ms=10_000), metrics=BatcherMetrics(registry)
        )
        await asyncio.gather(*(b.submit(i) for i in range(8)))
        await b.close()

    asyncio.run(main())
    assert _metric(registry, "lightbox_batcher_batch_size_count") == 2
    assert _metric(registry, "lightbox_batcher_batch_size_sum") == 8
    assert _metric(registry, "lightbox_batcher_batch_latency_seconds_count") == 2
    assert _metric(registry, "lightbox_batcher_queue_wait_seconds_count") == 8
    assert _metric(registry, "lightbox_batcher_queue_depth") == 0


def test_close_fails_waiting_items_and_refuses_new_ones() -> None:
    async def main() -> None:
        b = Batcher(Recorder(), BatchConfig(max_batch_size=10, max_wait_ms=10_000))
        waiting = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.01)
        await b.close()
        with pytest.raises(BatcherClosed):
            await waiting
        with pytest.raises(BatcherClosed):
            await b.submit(2)
        b.reopen()
        b.config = BatchConfig(max_batch_size=10, max_wait_ms=0)
        assert await b.submit(2) == 4
        await b.close()

    asyncio.run(main())


def test_same_batcher_serves_successive_event_loops() -> None:
    b = Batcher(Recorder(), BatchConfig(max_batch_size=4, max_wait_ms=1))

    async def once(x: int) -> int:
        return await b.submit(x)

    assert asyncio.run(once(1)) == 2
    assert asyncio.run(once(2)) == 4  # the first loop is gone; the batcher restarts in the new one


def test_compute_thread_goes_on_with_due_batches_while_the_loop_is_busy() -> None:
    """A backlog keeps the model busy even when the event loop cannot run (e.g. waiting for a core)."""
    fn = Recorder(delay_s=0.05)
    started: list[float] = []

    def timed(items: list[int]) -> list[int]:
        started.append(time.monotonic())
        return fn(items)

    async def main() -> tuple[list[int], float, float]:
        b = Batcher(timed, BatchConfig(max_batch_size=2, max_wait_ms=0))
        tasks = [asyncio.create_task(b.submit(i)) for i in range(8)]
        await asyncio.sleep(0.01)  # queued, first batch running
        block_start = time.monotonic()
        time.sleep(0.3)  # the loop is stuck: no hand-off through it can happen
        block_end = time.monotonic()
        out = await asyncio.gather(*tasks)
        await b.close()
        return out, block_start, block_end

    out, block_start, block_end = asyncio.run(main())
    assert out == [2 * i for i in range(8)]
    assert fn.batches == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # All four 50 ms batches started while the loop was blocked, back to back.
    assert all(block_start - 0.05 <= t <= block_end for t in started)


def test_chained_batches_deliver_errors_to_their_own_callers() -> None:
    def fail_odd_batches(items: list[int]) -> list[int]:
        time.sleep(0.01)
        if items[0] % 4 == 2:
            raise ValueError(f"bad batch {items}")
        return [-i for i in items]

    async def main() -> list[object]:
        b = Batcher(fail_odd_batches, BatchConfig(max_batch_size=2, max_wait_ms=0))
        out = await asyncio.gather(*(b.submit(i) for i in range(8)), return_exceptions=True)
        await b.close()
        return out

    out = asyncio.run(main())
    assert out[0:2] == [0, -1] and out[4:6] == [-4, -5]
    for i in (2, 3, 6, 7):
        assert isinstance(out[i], ValueError) and f"[{i - i % 2}, {i - i % 2 + 1}]" in str(out[i])


def test_any_exception_of_the_batch_function_reaches_its_callers() -> None:
    def stop(items: list[int]) -> list[int]:
        if items == [1]:
            raise StopIteration  # a future cannot hold this one: it must arrive wrapped
        return items

    async def main() -> tuple[BaseException, int]:
        b = Batcher(stop, BatchConfig(max_batch_size=1, max_wait_ms=0))
        with pytest.raises(RuntimeError, match="StopIteration") as failed:
            await asyncio.wait_for(b.submit(1), 2)
        after = await asyncio.wait_for(b.submit(2), 2)
        await b.close()
        return failed.value, after

    _, after = asyncio.run(main())
    assert after == 2  # and the batcher goes on


def test_callers_of_a_new_event_loop_are_answered_while_an_old_loops_batch_finishes() -> None:
    """The batcher serves successive loops; a compute thread started by the first must not answer
    the second loop's callers on the first (closed) loop."""
    fn = Recorder(delay_s=0.2)
    b = Batcher(fn, BatchConfig(max_batch_size=1, max_wait_ms=0))

    async def first() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.submit(1), 0.05)  # the caller leaves; its batch still computes

    async def second() -> list[int]:
        # Two items: this loop's own task takes [2] (it queues behind the old thread in the one-worker
        # executor); the old thread, done with [1], takes [3] and must answer it on this loop.
        out = await asyncio.wait_for(asyncio.gather(b.submit(2), b.submit(3)), 3)
        await b.close()
        return list(out)

    asyncio.run(first())
    assert asyncio.run(second()) == [4, 6]
    assert [1] in fn.batches and [2] in fn.batches and [3] in fn.batches


def test_close_while_a_backlog_is_computed_answers_everyone() -> None:
    async def main() -> list[object]:
        b = Batcher(Recorder(delay_s=0.05), BatchConfig(max_batch_size=1, max_wait_ms=0))
        tasks = [asyncio.create_task(b.submit(i)) for i in range(6)]
        await asyncio.sleep(0.07)
        await b.close()
        return list(await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 3))

    out = asyncio.run(main())
    done = [o for o in out if not isinstance(o, BaseException)]
    closed = [o for o in out if isinstance(o, BatcherClosed)]
    assert done and closed and len(done) + len(closed) == 6  # each got an answer or BatcherClosed
    assert done == [2 * i for i in range(len(done))]  # in order, none lost


def test_items_past_their_deadline_fail_uncomputed() -> None:
    """Behind a slow batch, an item whose request's timeout passes while it waits is failed, not
    computed: its client has given up, and its place goes to one still waiting."""
    fn = Recorder(delay_s=0.3)
    registry = CollectorRegistry()

    async def main() -> None:
        b = Batcher(fn, BatchConfig(max_batch_size=4, max_wait_ms=0), metrics=BatcherMetrics(registry))
        first = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.05)  # computing for 0.3 s
        hasty = asyncio.create_task(b.submit_many([2, 3], deadline=time.monotonic() + 0.1))
        patient = asyncio.create_task(b.submit_many([4], deadline=time.monotonic() + 5))
        assert await first == 2
        with pytest.raises(DeadlineExceeded, match="past its request's timeout"):
            await hasty
        assert await patient == [8]
        await b.close()

    asyncio.run(main())
    assert fn.batches == [[1], [4]]
    assert registry.get_sample_value("lightbox_batcher_expired_total") == 2
