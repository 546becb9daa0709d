from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from services.model_container.runner import ModelRunner


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
