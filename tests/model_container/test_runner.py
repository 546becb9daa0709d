import asyncio
import logging
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


async def _serve_until_decided(runner: ModelRunner, batches: int) -> list[float]:
    """Batches of 4 distinct inputs with short gaps, as a loaded replica runs them (bounded
    in count and time), until `runner` has moved, or tried to move, to processes."""
    answers: list[float] = []
    async with asyncio.timeout(60):
        for i in range(batches):
            inputs = [np.full(4, 4 * i + k, np.float32) for k in range(4)]
            answers.extend(await runner.run(inputs, expected_s=0.004, timeout_s=30,
                                            budget_s=0.020))
            await asyncio.sleep(0.003)
            if runner._switch is not None and runner._switch.done():
                break
    return answers


def _expected(answers: list[float]) -> list[float]:
    return [16.0 * (i // 4) + 4.0 * (i % 4) for i in range(len(answers))]


async def test_auto_moves_a_model_that_holds_the_gil_to_a_process_losing_no_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.model_container.runner")
    runner = ModelRunner("tests.helpers.gil_models:HoldsTheGil", "auto")
    await runner.start()
    try:
        answers = await _serve_until_decided(runner, 1500)
        assert runner.active == "process", caplog.text
        answers += await runner.run([np.full(4, 1, np.float32)], timeout_s=30)
    finally:
        await runner.aclose()
    assert answers[:-1] == _expected(answers[:-1])
    assert answers[-1] == 4.0
    assert "stall the event loop" in caplog.text


async def test_auto_leaves_a_model_that_releases_the_gil_on_threads() -> None:
    runner = ModelRunner("tests.helpers.gil_models:Sleeps", "auto")
    await runner.start()
    try:
        answers = await _serve_until_decided(runner, 400)
        assert runner.active == "thread" and runner._switch is None
    finally:
        await runner.aclose()
    assert answers == _expected(answers)


async def test_auto_keeps_a_model_that_cannot_load_twice_on_threads_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = ModelRunner("tests.helpers.gil_models:OneProcessOnly", "auto")
    await runner.start()
    try:
        answers = await _serve_until_decided(runner, 1500)
        assert runner._switch is not None and runner._switch.done(), "no move was tried"
        assert runner.active == "thread"
        answers += await runner.run([np.full(4, 1, np.float32)], timeout_s=30)
    finally:
        await runner.aclose()
    assert answers[-1] == 4.0 and answers[:-1] == _expected(answers[:-1])
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("stays on worker threads" in r.getMessage() and "bound to its first process"
               in r.getMessage() for r in warnings), caplog.text
