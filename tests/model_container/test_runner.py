import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from services.model_container.runner import INLINE_BELOW_S, ModelRunner


class PoolSizes:
    """Answers with the thread counts of the native pools its worker sees."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        sizes = [pool["num_threads"] for pool in threadpool_info()]
        return [sizes] * len(inputs)


@pytest.mark.parametrize("native_threads", [1])  # the machine default here is 2
async def test_a_worker_caps_the_native_thread_pools(native_threads: int) -> None:
    if not threadpool_info():
        pytest.skip("no native thread pool (BLAS/OpenMP) is loaded in this process")
    runner = ModelRunner("", model=PoolSizes(), native_threads=native_threads)
    await runner.start()
    try:
        (sizes,) = await runner.run([np.zeros(1)])
    finally:
        await runner.aclose()
    assert sizes and max(sizes) <= native_threads


class ThreadNames:
    """Answers with the name of the thread that ran it."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return [threading.current_thread().name] * len(inputs)


async def test_a_fast_batch_runs_on_the_loop_and_a_slow_or_unknown_one_in_the_worker() -> None:
    runner = ModelRunner("", model=ThreadNames())
    await runner.start()
    try:
        here = threading.current_thread().name
        (fast,) = await runner.run([np.zeros(1)], expected_s=INLINE_BELOW_S / 2)
        (slow,) = await runner.run([np.zeros(1)], expected_s=INLINE_BELOW_S * 2)
        (unknown,) = await runner.run([np.zeros(1)])
    finally:
        await runner.aclose()
    assert fast == here
    assert slow != here and slow.startswith("model")
    assert unknown == slow


async def test_with_several_workers_every_batch_runs_in_a_worker() -> None:
    runner = ModelRunner("", workers=2, model=ThreadNames())
    await runner.start()
    try:
        (name,) = await runner.run([np.zeros(1)], expected_s=INLINE_BELOW_S / 2)
    finally:
        await runner.aclose()
    assert name != threading.current_thread().name
