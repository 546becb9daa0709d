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

A batch that does not finish within its timeout raises `ModelHung`. A worker
process is then killed and the pool started again (the model reloaded); a
worker thread cannot be stopped, so the runner says it is `stuck` and the
container stops serving (its liveness fails and it is restarted). A worker
process that dies raises `WorkerDied` and the pool is started again too.

Each worker limits the native thread pools the model's libraries use (BLAS,
OpenMP) to `native_threads` (threadpoolctl; 0 leaves them alone): a serving
container runs one small batch at a time beside other processes, where idle
pool threads waking and spinning on every call cost more than they save. Scale
with replicas or `--concurrency` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from services.common.errors import Unavailable
from services.model_container.sdk import Model, load_model

logger = logging.getLogger(__name__)
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


class ModelHung(Unavailable):
    """A batch did not finish within its timeout (the frontend may ask another replica)."""


class WorkerDied(Unavailable):
    """The worker process running a batch died (the frontend may ask another replica)."""


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
        # Batches that timed out on a worker thread and have not returned since.
        self._stuck: list[concurrent.futures.Future[Any]] = []

    @property
    def stuck(self) -> bool:
        """A worker thread is still inside a batch that timed out: it cannot be reclaimed."""
        self._stuck = [f for f in self._stuck if not f.done()]
        return bool(self._stuck)

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
            await self._start_pool()

    async def _start_pool(self) -> None:
        # spawn, not fork: a forked child would inherit gRPC's threads and locks.
        self._executor = ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_in_process, initargs=(self.model_ref, self.native_threads),
        )
        loop = asyncio.get_running_loop()
        # Load the model now, not on the first query.
        await loop.run_in_executor(self._executor, _is_loaded)

    async def run(self, inputs: list[np.ndarray], expected_s: float | None = None,
                  timeout_s: float | None = None) -> Sequence[Any]:
        """The model's outputs for one batch; `expected_s` is its typical latency, if known.

        Raises ModelHung after `timeout_s`, WorkerDied when a worker process died.
        """
        pool = self._executor
        assert pool is not None, "runner not started"
        if self.kind == "thread":
            assert self.model is not None
            if self.workers == 1 and expected_s is not None and expected_s < INLINE_BELOW_S:
                return self.model.predict_batch(inputs)
            future = pool.submit(self.model.predict_batch, inputs)
        else:
            future = pool.submit(_predict_in_process, inputs)
        try:
            async with asyncio.timeout(timeout_s):
                result: Sequence[Any] = await asyncio.wrap_future(future)
                return result
        except TimeoutError:
            if self.kind == "thread":
                self._stuck.append(future)
            else:
                await self._restart_pool(pool, "a worker process hung")
            raise ModelHung(f"the model did not answer a batch of {len(inputs)} within "
                            f"{timeout_s:.3g} s") from None
        except BrokenProcessPool:
            await self._restart_pool(pool, "a worker process died")
            raise WorkerDied("the worker process running the model died") from None

    async def _restart_pool(self, pool: Executor, why: str) -> None:
        """Kill the worker processes of `pool` and start a new pool, the model loaded anew
        (unless another batch's failure already replaced `pool`)."""
        assert isinstance(pool, ProcessPoolExecutor)
        if pool is not self._executor:
            return
        logger.error("%s; restarting the model's worker processes", why)
        _kill_workers(pool)
        pool.shutdown(wait=False, cancel_futures=True)
        await self._start_pool()

    async def aclose(self) -> None:
        """Stop the workers without waiting for a batch still running (nor a stuck one)."""
        if isinstance(self._executor, ProcessPoolExecutor):
            _kill_workers(self._executor)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        if process.is_alive():
            process.kill()
