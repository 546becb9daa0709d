"""Where a model's batches run: worker threads (default) or worker processes.

Threads suit models that release the GIL (numpy, scikit-learn, PyTorch, ONNX
Runtime). Pure-Python models that hold the GIL can run in processes instead;
each process loads the model itself from its reference.

With one worker thread, a batch expected to take under `INLINE_BELOW_S` runs on
the event loop itself. Handing a sub-millisecond model's batch to a thread and
back costs more than the model: two thread switches, a wake-up of the loop, and
under load the loop and the worker queueing for the GIL (the digits models
answered at a p50 of 7-8.5 ms through the mesh at 200 q/s that way, 5 ms inline).
The loop is then held no longer than that.

Each worker limits the native thread pools the model's libraries use (BLAS,
OpenMP) to `native_threads` (threadpoolctl; 0 leaves them alone): a serving
container runs one small batch at a time beside other processes, where idle
pool threads waking and spinning on every call cost more than they save. Scale
with replicas or `--concurrency` instead.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from services.model_container.sdk import Model, load_model

WORKER_KINDS = ("thread", "process")
INLINE_BELOW_S = 0.002

_process_model: Model | None = None


def _limit_native_threads(native_threads: int) -> None:
    """In a worker: cap BLAS/OpenMP pools (OpenMP's limit holds per calling thread)."""
    if native_threads > 0:
        threadpool_limits(limits=native_threads)


def _load_in_process(model_ref: str, native_threads: int) -> None:
    global _process_model
    _limit_native_threads(native_threads)
    _process_model = load_model(model_ref)


def _is_loaded() -> bool:
    return _process_model is not None


def _predict_in_process(inputs: list[np.ndarray]) -> list[Any]:
    assert _process_model is not None, "worker process has no model"
    return list(_process_model.predict_batch(inputs))


class ModelRunner:
    """Runs `predict_batch` off the event loop, up to `workers` batches at once."""

    def __init__(self, model_ref: str, kind: str = "thread", workers: int = 1,
                 model: Model | None = None, native_threads: int = 1) -> None:
        if kind not in WORKER_KINDS:
            raise ValueError(f"worker kind {kind!r}: expected one of {', '.join(WORKER_KINDS)}")
        self.model_ref = model_ref
        self.kind = kind
        self.workers = workers
        self.model = model
        self.native_threads = native_threads
        self._executor: Executor | None = None

    async def start(self) -> None:
        if self.kind == "thread":
            if self.model is None:
                self.model = await asyncio.to_thread(load_model, self.model_ref)
            _limit_native_threads(self.native_threads)  # for the batches run inline
            self._executor = ThreadPoolExecutor(
                self.workers, thread_name_prefix="model",
                initializer=_limit_native_threads, initargs=(self.native_threads,),
            )
        else:
            # spawn, not fork: a forked child would inherit gRPC's threads and locks.
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_load_in_process, initargs=(self.model_ref, self.native_threads),
            )
            loop = asyncio.get_running_loop()
            # Load the model now, not on the first query.
            await loop.run_in_executor(self._executor, _is_loaded)

    async def run(self, inputs: list[np.ndarray], expected_s: float | None = None
                  ) -> Sequence[Any]:
        """The model's outputs for one batch; `expected_s` is its typical latency, if known."""
        loop = asyncio.get_running_loop()
        if self.kind == "thread":
            assert self.model is not None
            if self.workers == 1 and expected_s is not None and expected_s < INLINE_BELOW_S:
                return self.model.predict_batch(inputs)
            return await loop.run_in_executor(self._executor, self.model.predict_batch, inputs)
        return await loop.run_in_executor(self._executor, _predict_in_process, inputs)

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
