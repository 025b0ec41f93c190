"""Admission by time on plain Python: the service-rate estimate and the admit/refuse decision."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from serving.admission import (
    Admission,
    AdmissionMetrics,
    CpuCost,
    LoopLag,
    Refused,
    RetrySchedule,
    ServiceRate,
)

pytestmark = pytest.mark.unit


class Queue:
    """Stands in for the batcher's queue depth."""

    def __init__(self) -> None:
        self.depth = 0

    def __call__(self) -> int:
        return self.depth


def _metric(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def make(
    budget_s: float = 1.0, max_queue: int = 256, streams: int = 1, rate: float | None = 10.0
) -> tuple[Admission, Queue, CollectorRegistry]:
    queue, registry = Queue(), CollectorRegistry()
    admission = Admission(
        budget_s, max_queue, ServiceRate(streams, seed_images_per_s=rate), queue, AdmissionMetrics(registry)
    )
    return admission, queue, registry


def test_the_rate_is_streams_over_the_seconds_per_image() -> None:
    rate = ServiceRate(streams=2, alpha=0.5)
    assert rate.images_per_s is None  # nothing measured, nothing seeded
    rate.observe(images=2, seconds=0.2)  # 0.1 s per image per stream
    assert rate.images_per_s == pytest.approx(20.0)
    rate.observe(images=1, seconds=0.3)  # EWMA: 0.1 + 0.5 * (0.3 - 0.1) = 0.2 s per image
    assert rate.images_per_s == pytest.approx(10.0)
    rate.observe(images=0, seconds=1.0)  # an empty batch says nothing
    assert rate.images_per_s == pytest.approx(10.0)


def test_a_batch_running_slower_than_the_average_lowers_the_rate_at_once() -> None:
    rate = ServiceRate(streams=1, seed_images_per_s=1000.0)  # 1 ms per image
    key = rate.begin(images=2)
    time.sleep(0.05)  # 25 ms per image so far, and still running
    slow = rate.images_per_s
    assert slow is not None and slow < 1000.0 / 10
    rate.end(key, ok=False)  # failed: not averaged in, and no longer running
    assert rate.images_per_s == pytest.approx(1000.0)


def test_a_seed_stands_until_the_first_batch_replaces_it() -> None:
    rate = ServiceRate(streams=2, alpha=0.1, seed_images_per_s=40.0)
    assert rate.images_per_s == pytest.approx(40.0)
    rate.observe(4, 0.4)
    assert rate.images_per_s == pytest.approx(2 / (0.05 + 0.1 * (0.1 - 0.05)))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"streams": 0}, "streams"),
        ({"streams": 1, "alpha": 0}, "alpha"),
        ({"streams": 1, "alpha": 1.5}, "alpha"),
        ({"streams": 1, "seed_images_per_s": 0}, "seed_images_per_s"),
    ],
)
def test_bad_rate_parameters_are_named(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ServiceRate(**kwargs)


def test_bad_budget_or_cap_is_named() -> None:
    with pytest.raises(ValueError, match="budget_s"):
        Admission(0.0, 1, ServiceRate(1), Queue())
    with pytest.raises(ValueError, match="max_queue"):
        Admission(1.0, 0, ServiceRate(1), Queue())


def test_the_estimate_counts_queued_computing_and_reserved_images() -> None:
    admission, queue, _ = make(rate=10.0)
    queue.depth = 3
    held = admission.admit(2)  # admitted, still decoding
    with admission.computing_batch(4):
        assert admission.ahead() == 3 + 4 + 2
        assert admission.estimate(1) == pytest.approx((9 + 1) / 10)
        # A request's own reserved images are not ahead of it.
        assert admission.estimate(2, held=2) == pytest.approx((7 + 2) / 10)
    held.release()
    assert admission.ahead() == 3  # the batch finished, the decoding request gave its images back


def test_a_request_waits_for_its_whole_batch() -> None:
    queue = Queue()
    rate = ServiceRate(2, seed_images_per_s=10.0)
    capped = Admission(1.0, 256, rate, queue, AdmissionMetrics(CollectorRegistry()), batch=4)
    queue.depth = 5
    # One image in a round of two batches of four is answered with the round: 5 ahead + 8, not + 2.
    assert capped.estimate(1) == pytest.approx((5 + 8) / 10)
    assert capped.estimate(9) == pytest.approx((5 + 16) / 10)
    uncapped = Admission(1.0, 256, rate, queue, AdmissionMetrics(CollectorRegistry()))
    assert uncapped.estimate(1) == pytest.approx((5 + 2) / 10)
    # So the same queue refuses sooner with the cap: 13 images at 10/s is over a 1 s budget.
    with pytest.raises(Refused):
        capped.admit(1)
    uncapped.admit(1).release()
    with pytest.raises(ValueError, match="batch"):
        Admission(1.0, 256, rate, queue, batch=0)


def test_a_request_over_the_budget_is_refused_with_retry_after_from_the_estimate() -> None:
    admission, queue, registry = make(budget_s=1.0, rate=10.0)
    queue.depth = 9
    admission.admit(1).release()  # (9 + 1) / 10 = 1.0 s: on the budget, admitted
    queue.depth = 24
    with pytest.raises(Refused) as caught:
        admission.admit(1)  # 2.5 s
    assert caught.value.reason == "latency"
    assert caught.value.retry_after_s == 3  # whole seconds, rounded up
    assert "2.50s > budget 1.00s" in str(caught.value)
    assert admission.reserved == 0  # a refusal holds nothing
    assert _metric(registry, "lightbox_admission_rejected_total", {"reason": "latency"}) == 1


def test_retry_after_is_at_least_one_second() -> None:
    admission, queue, _ = make(budget_s=0.05, rate=100.0)
    queue.depth = 9  # 0.1 s
    with pytest.raises(Refused) as caught:
        admission.admit(1)
    assert caught.value.retry_after_s == 1


def test_an_idle_server_admits_a_request_bigger_than_the_budget() -> None:
    # 64 images at 10 img/s is 6.4 s: waiting would not make it any faster.
    admission, _, _ = make(budget_s=1.0, rate=10.0)
    ticket = admission.admit(1)
    ticket.extend(64)
    assert admission.reserved == 64
    # ... but the next request, behind those 64, is refused.
    with pytest.raises(Refused):
        admission.admit(1)


def test_until_the_rate_is_measured_only_the_image_cap_refuses() -> None:
    admission, queue, registry = make(max_queue=8, rate=None)
    queue.depth = 7
    assert admission.estimate(1) is None
    admission.admit(1).release()
    queue.depth = 8
    with pytest.raises(Refused) as caught:
        admission.admit(1)
    assert caught.value.reason == "queue" and caught.value.retry_after_s == 1
    assert _metric(registry, "lightbox_admission_rejected_total", {"reason": "queue"}) == 1
    assert _metric(registry, "lightbox_admission_estimated_wait_seconds") == 0
    assert _metric(registry, "lightbox_admission_service_rate_images_per_second") == 0


def test_until_the_rate_is_measured_one_round_of_batches_is_let_in() -> None:
    queue, registry = Queue(), CollectorRegistry()
    admission = Admission(1.0, 256, ServiceRate(2), queue, AdmissionMetrics(registry), unmeasured_limit=4)
    first = admission.admit(1)
    first.extend(10)  # an idle server admits any request
    first.release()
    queue.depth = 3
    admission.admit(1).release()  # 3 + 1 <= 4
    with pytest.raises(Refused) as caught:
        admission.admit(2)
    assert caught.value.reason == "latency" and caught.value.retry_after_s == 1
    assert "not measured yet" in str(caught.value)
    admission.rate.observe(1, 0.01)  # measured: 200 img/s, the estimate decides from now on
    admission.admit(2).release()


def test_the_image_cap_counts_images_still_decoding() -> None:
    admission, queue, _ = make(max_queue=4, rate=None)
    first = admission.admit(1)
    first.extend(3)
    with pytest.raises(Refused) as caught:
        admission.admit(2)  # 3 decoding + 2 new > 4, with nothing queued yet
    assert caught.value.reason == "queue"
    first.release()
    queue.depth = 3  # the same 3 images, now queued
    admission.admit(1).release()


def test_extending_refuses_releases_and_counts_once() -> None:
    admission, queue, registry = make(budget_s=1.0, rate=10.0)
    queue.depth = 5
    ticket = admission.admit(1)  # (5 + 1) / 10
    assert admission.reserved == 1
    with pytest.raises(Refused):
        ticket.extend(8)  # (5 + 8) / 10 = 1.3 s
    assert admission.reserved == 0 and ticket.released
    ticket.release()  # idempotent: the middleware's finally releases again
    assert admission.reserved == 0
    assert _metric(registry, "lightbox_admission_rejected_total", {"reason": "latency"}) == 1
    assert _metric(registry, "lightbox_admission_admitted_total") == 0
    with pytest.raises(RuntimeError, match="released"):
        ticket.extend(1)


def test_a_final_extension_counts_the_request_admitted() -> None:
    admission, _, registry = make()
    ticket = admission.admit(1)
    assert _metric(registry, "lightbox_admission_admitted_total") == 0  # not yet: its size is unknown
    ticket.extend(3)
    assert admission.reserved == 3
    assert _metric(registry, "lightbox_admission_admitted_total") == 1
    assert _metric(registry, "lightbox_admission_reserved_images") == 3
    ticket.release()
    assert admission.reserved == 0


def test_a_batch_is_timed_only_when_it_succeeds() -> None:
    admission, _, _ = make(rate=None)
    with pytest.raises(ZeroDivisionError), admission.computing_batch(2):
        1 / 0  # noqa: B018
    assert admission.computing == 0 and admission.rate.images_per_s is None
    with admission.computing_batch(2):
        assert admission.computing == 2
    assert admission.computing == 0 and admission.rate.images_per_s is not None


def test_compute_threads_count_side_by_side_without_losing_updates() -> None:
    admission, _, _ = make()

    def work() -> None:
        for _ in range(2000):
            with admission.computing_batch(1):
                pass

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admission.computing == 0


def test_metrics_show_the_budget_the_rate_and_the_estimate() -> None:
    admission, queue, registry = make(budget_s=0.3, streams=2, rate=20.0)
    queue.depth = 3
    assert _metric(registry, "lightbox_admission_budget_seconds") == pytest.approx(0.3)
    assert _metric(registry, "lightbox_admission_service_rate_images_per_second") == pytest.approx(20.0)
    # 3 queued, then the new image takes one of the two streams for a whole turn: (3 + 2) / 20.
    assert _metric(registry, "lightbox_admission_estimated_wait_seconds") == pytest.approx(5 / 20)


def test_the_tail_beyond_the_estimate_is_kept_free_within_the_budget() -> None:
    """Admitted requests took 0.3 s longer than estimated (decoding, the fill wait, a busy loop): a wait
    the model alone would finish within the budget is refused once it no longer fits with that tail."""
    admission, queue, registry = make(budget_s=1.0, rate=10.0)
    for overrun in [0.1] * 98 + [0.3] * 2:  # the 99th percentile of recent overruns counts
        admission.observe(0.2 + overrun, 0.2)
    assert admission.slack_s == pytest.approx(0.3)
    assert _metric(registry, "lightbox_admission_slack_seconds") == pytest.approx(0.3)
    queue.depth = 6
    admission.admit(1).release()  # 0.7 s + 0.3 s: on the budget, admitted
    queue.depth = 7
    with pytest.raises(Refused, match=r"0.80s \+ 0.30s beyond the model > budget 1.00s"):
        admission.admit(1)


def test_the_kept_tail_is_at_most_half_the_budget_and_ignores_unestimated_requests() -> None:
    admission, _, _ = make(budget_s=1.0, rate=10.0)
    admission.observe(5.0, None)  # admitted before the rate was known: no estimate to compare with
    assert admission.slack_s == 0.0
    for _ in range(10):
        admission.observe(5.0, 0.1)  # a stalled machine must not close admission for good
    assert admission.slack_s == 0.5


def test_a_final_extension_records_the_wait_it_was_admitted_with() -> None:
    admission, queue, _ = make(rate=10.0)
    queue.depth = 3
    ticket = admission.admit(1)
    assert not ticket.admitted and ticket.estimated is None
    ticket.extend(2)
    assert ticket.admitted and ticket.estimated == pytest.approx(0.5)  # (3 + 2) / 10


def test_the_event_loop_lag_is_exported_and_counted_in_the_wait() -> None:
    from serving.admission import LoopLag

    admission, queue, registry = make(budget_s=1.0, rate=10.0)
    lag = LoopLag(window=3)
    admission.loop_lag = lag
    lag.observe(0.4)  # the requests being decided were read 0.4 s ago
    assert _metric(registry, "lightbox_admission_loop_lag_seconds") == pytest.approx(0.4)
    queue.depth = 8
    with pytest.raises(Refused, match="estimated wait 1.30s"):
        admission.admit(1)  # 0.9 s of model time + 0.4 s already waited
    for _ in range(3):  # the burst leaves the window
        lag.observe(0.0)
    assert lag.seconds == 0.0
    assert admission.check(1) == pytest.approx(0.9)


def _lag_with_cpu_per_request(clock: Clock, cpu_s: float, cores: int = 1) -> LoopLag:
    """A LoopLag whose loop thread was measured at ``cpu_s`` per request (100 requests in one second)."""
    lag = LoopLag(cores=cores, recent_s=0.25, max_load=0.8, min_requests=10, min_s=0.5, clock=clock)
    lag.observe_cpu(wall=0.0, cpu=0.0)
    for _ in range(100):
        lag.arrived()
    lag.observe_cpu(wall=1.0, cpu=100 * cpu_s)
    assert lag.cpu_per_request == pytest.approx(cpu_s)
    clock.now += 10  # those arrivals are long past
    return lag


def test_a_flood_of_arrivals_takes_the_model_s_share_of_the_cores() -> None:
    clock = Clock()
    lag = _lag_with_cpu_per_request(clock, cpu_s=0.001)
    assert lag.load() == 0.0 and lag.wait(0.5) == pytest.approx(0.5)  # nothing arriving
    for _ in range(50):  # 200 requests/s at 1 ms of loop CPU each: a fifth of the one core
        lag.arrived()
    assert lag.load() == pytest.approx(0.2)
    assert lag.wait(0.4) == pytest.approx(0.5)  # 0.4 s of model time on 80% of the core
    for _ in range(1000):  # a flood: capped, the model keeps a share
        lag.arrived()
    assert lag.load() == pytest.approx(0.8)
    clock.now += 0.3  # the burst is over
    assert lag.load() == 0.0
    spread = _lag_with_cpu_per_request(Clock(), cpu_s=0.001, cores=4)
    for _ in range(50):
        spread.arrived()
    assert spread.load() == pytest.approx(0.05)  # the same arrivals over four cores
    with pytest.raises(ValueError, match="max_load"):
        LoopLag(max_load=1.0)


def test_the_loop_cpu_per_request_ignores_idle_and_light_load() -> None:
    lag = LoopLag(min_requests=10, min_s=0.5, max_s=5.0, clock=Clock())
    lag.observe_cpu(wall=0.0, cpu=0.0)
    lag.arrived()
    lag.observe_cpu(wall=30.0, cpu=0.3)  # one request in half a minute: the window is dropped
    assert lag.cpu_per_request is None and lag.load() == 0.0


def test_admission_holds_the_budget_with_the_loop_s_share() -> None:
    clock = Clock()
    admission, queue, _ = make(budget_s=1.0, rate=10.0)
    admission.loop_lag = _lag_with_cpu_per_request(clock, cpu_s=0.002)
    queue.depth = 6
    assert admission.check(1) == pytest.approx(0.7)  # no flood: the model's 0.7 s
    for _ in range(50):  # 200 requests/s at 2 ms each: 40% of the core
        admission.loop_lag.arrived()
    with pytest.raises(Refused, match="estimated wait 1.17s"):
        admission.check(1)  # 0.7 s of model time on 60% of the core


def test_the_lag_sampler_sees_a_blocked_loop() -> None:
    import asyncio

    from serving.admission import LoopLag

    async def main() -> float:
        lag = LoopLag(interval_s=0.01)
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.03)
        time.sleep(0.2)  # a callback hogging the loop
        await asyncio.sleep(0.03)
        task.cancel()
        return lag.seconds

    assert asyncio.run(main()) >= 0.15


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_refusals_are_spread_over_the_time_to_let_the_refused_back_in() -> None:
    """8 img/s, invited back at 16/s: 160 images refused within the last second would take 10 s to
    let back in; each is told the backlog's 1.25 s plus its random share of that."""
    clock = Clock()
    shares = iter([0.0] * 159 + [0.5, 1.0])
    schedule = RetrySchedule(invite=2.0, clock=clock, rng=lambda: next(shares))
    first = [schedule.retry_after(1.25, 1, 8.0) for _ in range(159)]
    assert first == [2] * 159  # a share of 0: when the backlog has drained, rounded up
    assert schedule.retry_after(1.25, 1, 8.0) == 7  # 1.25 + 0.5 * 160 / 16 = 6.25
    assert schedule.retry_after(1.25, 1, 8.0) == 12  # 1.25 + 1.0 * 161 / 16 = 11.3
    assert schedule.refused_images_per_s() == pytest.approx(161.0)


def test_a_flood_that_ended_is_forgotten() -> None:
    clock = Clock()
    schedule = RetrySchedule(invite=2.0, clock=clock, rng=lambda: 1.0)
    for _ in range(500):
        schedule.retry_after(1.0, 1, 10.0)
    assert schedule.retry_after(1.0, 1, 10.0) > 20
    clock.now += 1.5  # no refusal for longer than the window: no client waits on the old flood
    assert schedule.refused_images_per_s() == 0.0
    assert schedule.retry_after(1.0, 1, 10.0) == 2  # 1 + 1 / 20, rounded up


def test_a_request_of_many_images_counts_as_many() -> None:
    clock = Clock()
    schedule = RetrySchedule(invite=1.0, clock=clock, rng=lambda: 1.0)
    assert schedule.retry_after(0.5, 30, 10.0) == 4  # 0.5 + 30 / 10 = 3.5


def test_retry_after_without_a_measured_rate_and_its_cap() -> None:
    clock = Clock()
    assert RetrySchedule(clock=clock).retry_after(2.5, 1, None) == 3
    assert RetrySchedule(clock=clock).retry_after(None, 1, None) == 1
    capped = RetrySchedule(invite=1.0, max_s=5, clock=clock, rng=lambda: 1.0)
    assert max(capped.retry_after(1.0, 1, 1.0) for _ in range(20)) == 5
    with pytest.raises(ValueError, match="invite"):
        RetrySchedule(invite=0)
    with pytest.raises(ValueError, match="window_s"):
        RetrySchedule(window_s=0)


def test_a_flood_of_refusals_gets_spread_retry_afters() -> None:
    admission, queue, _ = make(budget_s=1.0, rate=10.0)
    queue.depth = 20  # 2.1 s for a new image
    retries = []
    for _ in range(200):
        with pytest.raises(Refused) as caught:
            admission.admit(1)
        retries.append(caught.value.retry_after_s)
    assert min(retries) == 3  # never sooner than the backlog drains
    assert max(retries) > 5  # 200 refused in a second take 5 s to let back in at twice 10 img/s


class Clocks:
    """Wall and process-CPU clocks a test moves by hand."""

    def __init__(self) -> None:
        self.wall, self.cpu = 100.0, 50.0

    def spend(self, wall_s: float, cpu_s: float) -> None:
        self.wall += wall_s
        self.cpu += cpu_s


def _cpu_cost(clocks: Clocks, cores: int = 1) -> CpuCost:
    return CpuCost(
        cores,
        min_images=10,
        min_s=0.5,
        max_s=5.0,
        alpha=0.5,
        cpu_clock=lambda: clocks.cpu,
        clock=lambda: clocks.wall,
    )


def test_the_cpu_each_image_costs_bounds_the_rate_the_model_alone_would_give() -> None:
    clocks = Clocks()
    cpu = _cpu_cost(clocks, cores=2)
    rate = ServiceRate(streams=1, seed_images_per_s=100.0, cpu=cpu)  # the batches alone: 100 images/s
    assert rate.images_per_s == pytest.approx(100.0)  # nothing measured: the model's rate
    clocks.spend(wall_s=1.0, cpu_s=1.0)  # 20 images in 1 s took 1 CPU-second: 50 ms each, all included
    cpu.completed(20)
    assert cpu.images_per_s == pytest.approx(2 / 0.05)  # 2 cores / 50 ms
    assert rate.images_per_s == pytest.approx(40.0)  # the lower of the two
    clocks.spend(wall_s=1.0, cpu_s=0.1)  # later cheaper (a GPU took the model): 5 ms per image
    cpu.completed(20)
    assert cpu.images_per_s == pytest.approx(2 / 0.0275)  # EWMA: 50 + 0.5 * (5 - 50) ms
    assert rate.images_per_s == pytest.approx(2 / 0.0275)  # now the CPU allows more: still the lower


def test_idle_time_and_light_load_never_count_as_cpu_per_image() -> None:
    clocks = Clocks()
    cpu = _cpu_cost(clocks)
    clocks.spend(wall_s=0.2, cpu_s=0.2)
    cpu.completed(30)  # enough images but under min_s: not yet a window
    assert cpu.images_per_s is None
    clocks.spend(wall_s=30.0, cpu_s=0.5)  # a few requests over half a minute: the window is too long
    cpu.completed(3)
    assert cpu.images_per_s is None  # dropped, and a new window starts
    clocks.spend(wall_s=1.0, cpu_s=0.5)
    cpu.completed(9)  # under min_images within max_s: waits for more
    assert cpu.images_per_s is None
    clocks.spend(wall_s=0.0, cpu_s=0.0)
    cpu.completed(1)  # 10 images in 1 s for 0.5 CPU-s: measured
    assert cpu.images_per_s == pytest.approx(1 / 0.05)
    with pytest.raises(ValueError, match="cores"):
        CpuCost(0)


def test_slow_images_under_load_are_measured_though_a_window_holds_few() -> None:
    """Phone HEIC photos: half a second of a core each to decode, so a window of ``min_images`` lasts
    longer than ``max_s``; the cores were busy all along, so it is measured, not dropped as idle."""
    clocks = Clocks()
    cpu = _cpu_cost(clocks, cores=2)
    clocks.spend(wall_s=6.0, cpu_s=11.0)  # 20 images in 6 s, both cores busy: 0.55 CPU-s each
    cpu.completed(20)
    assert cpu.images_per_s == pytest.approx(2 / 0.55)
    clocks.spend(wall_s=30.0, cpu_s=5.0)  # a quiet half minute (under half the cores busy): dropped
    cpu.completed(4)
    assert cpu.images_per_s == pytest.approx(2 / 0.55)


def test_admission_refuses_sooner_when_the_cpu_per_image_is_the_limit() -> None:
    clocks = Clocks()
    cpu = _cpu_cost(clocks)
    queue, registry = Queue(), CollectorRegistry()
    rate = ServiceRate(1, seed_images_per_s=20.0, cpu=cpu)
    admission = Admission(1.0, 256, rate, queue, AdmissionMetrics(registry))
    queue.depth = 15
    assert admission.check(1) == pytest.approx(16 / 20)  # the model alone: 0.8 s, admitted
    clocks.spend(wall_s=1.0, cpu_s=1.0)
    cpu.completed(10)  # decode and HTTP on the same core: 100 ms an image, 10 images/s
    with pytest.raises(Refused):
        admission.check(1)  # 16 images at 10/s: 1.6 s, over the budget


def test_a_body_still_arriving_past_the_grace_stops_holding_the_budget() -> None:
    """A client trickling its body (a phone on a poor link, a slowloris) holds its reserved image for
    the upload grace only; then others are admitted on the real backlog, and the slow request is
    judged again once its body is in."""
    admission, queue, registry = make(budget_s=1.0, rate=10.0)  # 10 images/s: 10 fit in the budget
    slow = [admission.admit(1) for _ in range(10)]
    with pytest.raises(Refused):
        admission.admit(1)  # 10 bodies arriving count as work ahead
    assert admission.upload_grace_s == pytest.approx(0.25)
    admission._expire_uploads(now=time.monotonic() + 0.3)
    assert admission.reserved == 0 and _metric(registry, "lightbox_admission_slow_uploads_total") == 10
    fast = admission.admit(1)  # the idle server admits again
    fast.extend(1)
    queue.depth = 10  # meanwhile the queue filled up
    with pytest.raises(Refused):
        slow[0].extend(1)  # its body is in: judged on the backlog of the moment
    slow[1].release()
    assert admission.reserved == 1  # the fast one's image; the slow ones hold nothing
    fast.release()
    assert admission.reserved == 0


def test_a_slow_upload_is_no_overrun_of_the_server() -> None:
    admission, _, registry = make(budget_s=1.0, rate=10.0)
    ticket = admission.admit(1)
    admission._expire_uploads(now=time.monotonic() + 0.3)
    ticket.extend(1)
    ticket.answered(30.0)  # 30 s since its headers, almost all of it the client's upload
    assert admission.slack_s < 0.1
    # On a quiet server no other request expires it: its own final check does.
    alone = admission.admit(1)
    admission._reading[alone] -= 1.0  # its headers came a second ago
    alone.extend(1)
    alone.answered(1.0)
    assert admission.slack_s < 0.1 and _metric(registry, "lightbox_admission_slow_uploads_total") == 2


def test_costlier_decodes_count_in_the_wait_not_in_the_image_cap() -> None:
    """A request whose photos will cost nine typical images' work more to decode (a HEIC burst after
    small JPEGs) waits, and makes the next wait, as the work it brings; the image cap still counts
    images, and the extra goes when the request leaves its reservation."""
    admission, _, registry = make(budget_s=1.0, max_queue=4, rate=10.0)  # 0.1 s an image
    heavy = admission.admit(1)
    heavy.extend(1, 5.0)  # one image, six images' work
    assert admission.extra == 5.0
    assert _metric(registry, "lightbox_admission_reserved_extra_images") == 5.0
    assert admission.estimate(1) == pytest.approx((1 + 5 + 1) / 10)  # behind the heavy one's six
    light = admission.admit(1)
    light.extend(1)
    with pytest.raises(Refused, match="estimated wait"):  # 6 ahead + 1 + its own 4 > 1 s
        admission.admit(1).extend(1, 4.0)
    # The cap counts images: two reserved and two more fit under max_queue=4, heavy or not.
    small = admission.admit(1)
    small.extend(1)
    small.release()
    heavy.release()
    assert admission.extra == 0.0
    assert admission.estimate(1) == pytest.approx((1 + 1) / 10)
    light.release()
    # Nothing ahead: even a very costly request is admitted on an idle server.
    alone = admission.admit(1)
    alone.extend(1, 50.0)
    alone.release()
    assert admission.extra == 0.0


def test_a_request_with_a_timeout_is_judged_against_it() -> None:
    """A client that gives up after 0.3 s (Triton's timeout parameter, a proxy's route timeout) is
    refused at once when its wait is estimated past that, though within the server's budget."""
    admission, queue, _ = make(budget_s=1.0, rate=10.0)  # 0.1 s an image
    queue.depth = 4  # 0.4 s ahead, + its own 0.1
    patient = admission.admit(1)
    patient.extend(1)
    patient.release()
    hasty = admission.admit(1)
    hasty.set_timeout(0.3)
    assert hasty.deadline == pytest.approx(hasty.created + 0.3)
    with pytest.raises(Refused, match="estimated wait 0.50s > the request's timeout 0.30s"):
        hasty.extend(1)
    roomy = admission.admit(1)
    roomy.set_timeout(5.0)  # longer than the budget: the budget still holds
    queue.depth = 12
    with pytest.raises(Refused, match="> budget 1.00s"):
        roomy.extend(1)
