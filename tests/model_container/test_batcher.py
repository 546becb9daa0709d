import asyncio
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import uvloop

from services.common import clock
from services.common.errors import DeadlineExpired, Overloaded, Unavailable
from services.model_container.batcher import PROBE_S, Batcher, BatchingConfig, ModelFailed
from services.model_container.latency_model import LatencyModel
from services.model_container.runner import ModelRunner


class GatedModel:
    """Doubles its inputs; the first batch waits for `gate`. Records every batch it saw."""

    def __init__(self, fail_when: float | None = None) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[float]] = []
        self.fail_when = fail_when

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        self.started.set()
        self.gate.wait(10)
        values = [float(x[0]) for x in inputs]
        self.batches.append(values)
        if self.fail_when in values:
            raise RuntimeError("boom")
        return [x * 2 for x in inputs]


def make_batcher(model: object, **config: Any) -> Batcher:
    return Batcher(ModelRunner("", model=model), BatchingConfig(**config))  # type: ignore[arg-type]


async def started(model: GatedModel) -> None:
    assert await asyncio.to_thread(model.started.wait, 10)


@pytest.fixture
async def far() -> float:
    return clock.now() + 30


async def test_batches_respect_the_maximum_and_answers_reach_their_callers(far: float) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_batch_size=4)
    await batcher.start()
    try:
        first = batcher.submit(np.array([0.0]), far)
        await started(model)
        rest = [batcher.submit(np.array([float(i)]), far) for i in range(1, 11)]
        model.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    finally:
        await batcher.aclose()
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(11)]
    assert max(len(b) for b in model.batches) == 4
    assert sorted(v for b in model.batches for v in b) == [float(i) for i in range(11)]


async def test_expired_queries_never_reach_the_model(far: float) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_batch_size=8)
    await batcher.start()
    try:
        first = batcher.submit(np.array([1.0]), far)
        await started(model)
        doomed = batcher.submit(np.array([99.0]), clock.now() + 0.05)
        kept = batcher.submit(np.array([2.0]), far)
        done, _ = await asyncio.wait([doomed], timeout=0.2)
        assert not done  # still queued behind the running batch, not yet answered
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(first, kept), 10)
        with pytest.raises(DeadlineExpired):
            await doomed
    finally:
        await batcher.aclose()
    assert 99.0 not in [v for b in model.batches for v in b]


async def test_a_failing_batch_fails_only_its_own_queries(far: float) -> None:
    model = GatedModel(fail_when=-1.0)
    batcher = make_batcher(model, max_batch_size=1)
    await batcher.start()
    try:
        bad = batcher.submit(np.array([-1.0]), far)
        good = batcher.submit(np.array([3.0]), far)
        model.gate.set()
        with pytest.raises(ModelFailed, match="RuntimeError: boom"):
            await asyncio.wait_for(bad, 10)
        assert float((await asyncio.wait_for(good, 10))[0]) == 6.0
    finally:
        await batcher.aclose()


async def test_a_batch_the_model_raises_on_is_run_by_halves(far: float) -> None:
    """One poisoned query among eight: only it gets the model's error."""
    model = GatedModel(fail_when=-1.0)
    batcher = make_batcher(model, max_batch_size=8)
    await batcher.start()
    try:
        first = batcher.submit(np.array([0.0]), far)
        await started(model)
        values = [1.0, 2.0, -1.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        rest = [batcher.submit(np.array([v]), far) for v in values]
        model.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True),
                                         10)
    finally:
        await batcher.aclose()
    failed = [v for v, r in zip([0.0, *values], results, strict=True)
              if isinstance(r, BaseException)]
    assert failed == [-1.0]
    assert isinstance(results[3], ModelFailed) and "RuntimeError: boom" in str(results[3])
    assert [float(r[0]) for r in results if not isinstance(r, BaseException)] == [
        2.0 * v for v in (0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0)]
    assert len(model.batches) <= 2 + 2 * 3  # the batch, then two halves per level


class HangsOnNegative:
    """Doubles its inputs, but never returns (until `release`) from a batch with -1."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        if any(float(x[0]) == -1.0 for x in inputs):
            self.release.wait(30)
        return [x * 2 for x in inputs]


async def test_a_hung_batch_times_out_and_a_stuck_thread_makes_the_replica_unhealthy(
    far: float,
) -> None:
    model = HangsOnNegative()
    batcher = make_batcher(model, max_batch_size=1, concurrency=2, batch_timeout_s=0.2)
    await batcher.start()
    try:
        hung = batcher.submit(np.array([-1.0]), far)
        with pytest.raises(Unavailable, match=r"did not answer a batch of 1 within 0\.2 s"):
            await asyncio.wait_for(hung, 10)
        await asyncio.wait_for(batcher.unhealthy.wait(), 10)
        with pytest.raises(Unavailable, match="replica is unhealthy"):
            batcher.submit(np.array([3.0]), far)
    finally:
        model.release.set()
        await batcher.aclose()


def test_the_batch_timeout_follows_the_latency_model() -> None:
    batcher = make_batcher(GatedModel())
    assert batcher.batch_timeout_s(8) == 30.0  # nothing measured yet
    for _ in range(50):
        batcher.latency.observe(8, 0.5)
    assert batcher.batch_timeout_s(8) == pytest.approx(5.0, rel=0.2)
    for _ in range(50):
        batcher.latency.observe(1, 0.001)
    assert batcher.batch_timeout_s(1) == 1.0  # never under a second
    assert make_batcher(GatedModel(), batch_timeout_s=2.5).batch_timeout_s(8) == 2.5


async def test_a_full_queue_rejects_at_once(far: float) -> None:
    model = GatedModel()
    batcher = make_batcher(model, max_batch_size=1, max_queue=2)
    await batcher.start()
    try:
        running = batcher.submit(np.array([0.0]), far)
        await started(model)
        queued = [batcher.submit(np.array([1.0]), far), batcher.submit(np.array([2.0]), far)]
        assert batcher.queue_depth == 2
        with pytest.raises(Overloaded, match="queue full"):
            batcher.submit(np.array([3.0]), far)
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(running, *queued), 10)
    finally:
        await batcher.aclose()


async def test_a_query_already_late_is_refused() -> None:
    batcher = make_batcher(GatedModel())
    await batcher.start()
    try:
        with pytest.raises(DeadlineExpired):
            batcher.submit(np.array([0.0]), clock.now() - 1)
    finally:
        await batcher.aclose()


class InstantModel:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.sizes: list[int] = []

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        self.started.set()
        self.gate.wait(10)
        self.sizes.append(len(inputs))
        return [0] * len(inputs)


def seeded_batcher(model: object, **config: Any) -> Batcher:
    """A batcher whose latency model already knows: 5 ms per batch + 1 ms per item."""
    batcher = make_batcher(model, **config)
    for size in [1, 16, 32, 64] * 16:
        batcher.latency.observe(size, 0.005 + 0.001 * size)
    assert batcher.latency.known
    return batcher


@pytest.mark.parametrize("slo_ms", [20, 40, 100])
async def test_batches_are_as_large_as_the_deadline_allows(slo_ms: int, far: float) -> None:
    model = InstantModel()
    batcher = seeded_batcher(model, max_batch_size=64, max_delay_ms=0)
    await batcher.start()
    try:
        blocker = batcher.submit(np.array([0.0]), far)
        await asyncio.to_thread(model.started.wait, 10)
        deadline = clock.now() + slo_ms / 1000
        queued, refused = [], 0
        for _ in range(64):
            try:
                queued.append(batcher.submit(np.array([1.0]), deadline))
            except Overloaded:
                refused += 1  # its wait would pass the deadline: refused at once
        model.gate.set()
        await asyncio.wait_for(blocker, 10)
        await asyncio.wait([asyncio.ensure_future(q) for q in queued], timeout=10)
    finally:
        await batcher.aclose()
    second = model.sizes[1]
    assert second <= min(slo_ms - 5, 64)  # 5 ms + 1 ms per item must fit in the SLO
    assert second >= {20: 5, 40: 20, 100: 64}[slo_ms], model.sizes
    assert refused == 64 - len(queued)
    assert (refused > 0) == (slo_ms < 100)


async def test_a_query_that_cannot_finish_in_time_is_expired_unrun(far: float) -> None:
    model = InstantModel()
    model.gate.set()
    batcher = seeded_batcher(model)
    await batcher.start()
    try:
        # 5 ms + 1 ms is the least a batch takes; 3 ms is not enough. Admission already
        # knows: the query is refused at once rather than queued.
        with pytest.raises(Overloaded, match="estimated wait"):
            batcher.submit(np.array([0.0]), clock.now() + 0.003)
        ok = batcher.submit(np.array([0.0]), far)
        await asyncio.wait_for(ok, 10)
    finally:
        await batcher.aclose()
    assert model.sizes == [1]


async def test_delayed_batching_waits_for_more_but_not_past_the_deadline() -> None:
    model = InstantModel()
    model.gate.set()
    batcher = seeded_batcher(model, max_batch_size=64, max_delay_ms=50)
    await batcher.start()
    try:
        # Queries 1 ms apart: the batcher expects more and waits for them.
        futures = []
        for _ in range(10):
            futures.append(batcher.submit(np.array([0.0]), clock.now() + 0.2))
            await asyncio.sleep(0.001)
        # A query the batcher held past its deadline would fail here as expired.
        await asyncio.wait_for(asyncio.gather(*futures), 10)
    finally:
        await batcher.aclose()
    assert max(model.sizes) > 1  # it grouped queries instead of running them one by one


async def test_the_fixed_baseline_waits_its_timeout() -> None:
    model = InstantModel()
    model.gate.set()
    batcher = make_batcher(model, mode="fixed", max_batch_size=32, max_delay_ms=30)
    await batcher.start()
    try:
        futures = [batcher.submit(np.array([0.0]), clock.now() + 5) for _ in range(5)]
        await asyncio.wait_for(asyncio.gather(*futures), 10)
    finally:
        await batcher.aclose()
    assert model.sizes == [5]


class SleepyModel:
    """Takes `sleep_s` per batch whatever its size; counts the batches it ran."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s
        self.batches = 0

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        self.batches += 1
        threading.Event().wait(self.sleep_s)
        return [x for x in inputs]


async def test_a_model_always_too_slow_is_learnt_refused_and_probed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches of one only (every one late): still learnt, then refused at once, and
    run again now and then to see whether it got faster."""
    monkeypatch.setattr("services.model_container.batcher.PROBE_S", 0.3)
    model = SleepyModel(0.03)
    batcher = make_batcher(model, max_batch_size=8)
    await batcher.start()
    try:
        for _ in range(8):  # each answer comes back past its 10 ms deadline
            await batcher.submit(np.array([0.0]), clock.now() + 0.010)
        assert batcher.latency.typical(1) == pytest.approx(0.03, abs=0.02)
        ran = model.batches
        with pytest.raises(Overloaded, match="estimated wait"):
            batcher.submit(np.array([0.0]), clock.now() + 0.010)
        await asyncio.sleep(0.35)  # idle past PROBE_S: the next one runs anyway
        await batcher.submit(np.array([0.0]), clock.now() + 0.010)  # late, but run
        assert model.batches == ran + 1
        with pytest.raises(Overloaded, match="estimated wait"):  # and refused again
            batcher.submit(np.array([0.0]), clock.now() + 0.010)
    finally:
        await batcher.aclose()


async def test_a_model_wrongly_learnt_as_too_slow_is_served_again_after_one_probe() -> None:
    """Its latency was learnt while the process stalled (40 ms a batch; it takes well
    under 1 ms): queries are refused as too slow, until the first probe, a quarter of
    a second on, shows it fast; from then on queries are answered."""
    model = InstantModel()
    model.gate.set()
    batcher = make_batcher(model, max_batch_size=8)
    for _ in range(8):
        batcher.latency.observe(1, 0.040)
    await batcher.start()
    try:
        with pytest.raises(Overloaded, match="estimated wait"):
            batcher.submit(np.array([0.0]), clock.now() + 0.010)
        await asyncio.sleep(PROBE_S + 0.05)
        await batcher.submit(np.array([0.0]), clock.now() + 0.010)  # the probe, fast
        for _ in range(20):
            await asyncio.wait_for(batcher.submit(np.array([0.0]), clock.now() + 0.010), 1)
    finally:
        await batcher.aclose()


class SpinningModel:
    """Keeps the CPU busy for `cost_s` per batch, like a small scikit-learn model."""

    def __init__(self, cost_s: float) -> None:
        self.cost_s = cost_s

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        end = time.perf_counter() + self.cost_s
        while time.perf_counter() < end:
            pass
        return [0] * len(inputs)


class RecordingLatency(LatencyModel):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def observe(self, batch_size: int, latency_s: float, probe: bool = False) -> None:
        self.seen.append(latency_s)
        super().observe(batch_size, latency_s, probe)


def test_sub_millisecond_batches_are_timed_to_the_microsecond_on_uvloop() -> None:
    """The services run on uvloop, whose loop clock counts whole milliseconds: a 0.3 ms
    model must still be learnt as 0.3 ms, not as batches of 0 or 1 ms."""
    latency = RecordingLatency()

    async def serve() -> None:
        batcher = Batcher(ModelRunner("", model=SpinningModel(0.0003)),
                          latency=latency)
        await batcher.start()
        try:
            for _ in range(40):
                await batcher.submit(np.array([0.0]), clock.now() + 1)
        finally:
            await batcher.aclose()

    uvloop.run(serve())
    assert 0.0003 <= statistics.median(latency.seen) < 0.002, latency.seen


@pytest.mark.parametrize(("batch_s", "queued", "slots"), [
    (0.002, 4, 1),    # short against a 20 ms budget: the queued wait for a bigger batch
    (0.010, 4, 2),    # half the budget: waiting for it would cost deadlines
    (0.002, 64, 2),   # a full batch waits: one worker cannot keep up
])
async def test_a_second_batch_runs_beside_the_first_only_when_it_helps(
    batch_s: float, queued: int, slots: int,
) -> None:
    batcher = make_batcher(GatedModel(), max_batch_size=64, concurrency=2)
    for size in (1, 64) * 8:
        batcher.latency.observe(size, batch_s * size / 64)
    for i in range(queued):
        batcher.submit(np.array([float(i)]), clock.now() + 0.020)
    assert batcher._slots() == slots
