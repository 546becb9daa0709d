import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from services.common.errors import DeadlineExpired, Overloaded
from services.model_container.batcher import Batcher, ModelFailed


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


async def started(model: GatedModel) -> None:
    assert await asyncio.to_thread(model.started.wait, 10)


@pytest.fixture
async def far() -> float:
    return asyncio.get_running_loop().time() + 30


async def test_batches_respect_the_maximum_and_answers_reach_their_callers(far: float) -> None:
    model = GatedModel()
    batcher = Batcher(model, max_batch_size=4)
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
    batcher = Batcher(model, max_batch_size=8)
    await batcher.start()
    loop = asyncio.get_running_loop()
    try:
        first = batcher.submit(np.array([1.0]), far)
        await started(model)
        doomed = batcher.submit(np.array([99.0]), loop.time() + 0.05)
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
    batcher = Batcher(model, max_batch_size=1)
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


async def test_a_full_queue_rejects_at_once(far: float) -> None:
    model = GatedModel()
    batcher = Batcher(model, max_batch_size=1, max_queue=2)
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
    batcher = Batcher(GatedModel())
    await batcher.start()
    try:
        with pytest.raises(DeadlineExpired):
            batcher.submit(np.array([0.0]), asyncio.get_running_loop().time() - 1)
    finally:
        await batcher.aclose()
