"""Where a model's batches run: worker threads, worker processes, or either (`auto`).

Threads suit models that release the GIL (numpy, most of scikit-learn, PyTorch,
ONNX Runtime). A model that holds the GIL stalls the event loop while its batch
runs on a thread, and the loop cannot read, write or plan meanwhile; in worker
processes (`process_worker.py`) it runs beside the loop instead.

`auto` (the default) starts on threads and measures the stall as it serves
(`stall.py`): once the loop waits at least `MIN_STALL_S`, and `STALL_SHARE` of a
query's time budget, longer during thread batches than outside them, the model
moves to warm worker processes. They load the model and run a recent batch
before they take any traffic; the batches running meanwhile finish on their
threads, so no query is lost. The move is logged and counted
(`clipper.worker.switches`). A model that cannot be loaded in another process,
or whose outputs cannot be sent back, stays on threads with a warning.

With one worker thread, a batch expected to take under `INLINE_BELOW_S` runs on
the event loop itself. Handing a sub-millisecond model's batch to a thread and
back costs more than the model: two thread switches, a wake-up of the loop, and
under load the loop and the worker queueing for the GIL (the digits models
answered at a p50 of 7-8.5 ms through the mesh at 200 q/s that way, 5 ms inline).
The loop is then held no longer than that.

A batch that does not finish within its timeout raises `ModelHung`. A worker
process is then killed and started again (the model reloaded); a worker thread
cannot be stopped, so the runner says it is `stuck` and the container stops
serving (its liveness fails and it is restarted). A worker process that dies
raises `WorkerDied` and is started again too.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

from services.model_container import metrics
from services.model_container.process_worker import (
    ModelHung,
    ProcessPool,
    WorkerDied,
    WorkerLoadFailed,
)
from services.model_container.sdk import Model, ModelSource, ModelSpecs, as_source, specs_of
from services.model_container.stall import StallMeter

__all__ = ["INLINE_BELOW_S", "WORKER_KINDS", "ModelHung", "ModelRunner", "WorkerDied"]

logger = logging.getLogger(__name__)
WORKER_KINDS = ("auto", "thread", "process")
INLINE_BELOW_S = 0.002
# auto: the stall that moves a model to worker processes (both bounds must be passed).
# Measured on 2 cores at 100-400 q/s, 20 ms SLO: a forest (50 trees) 1.6-3.9 ms, a kernel
# SVM on batches of up to 64 1.0-1.9 ms, a model that sleeps (releases the GIL) under 0.5 ms.
MIN_STALL_S = 0.001
STALL_SHARE = 0.05
# auto: thread batches between two looks at the stall.
CHECK_EVERY = 16
TRIAL_TIMEOUT_S = 30.0


def limit_native_threads(native_threads: int) -> None:
    """In a worker: cap BLAS/OpenMP pools (OpenMP's limit holds per calling thread)."""
    if native_threads > 0:
        threadpool_limits(limits=native_threads)


class ModelRunner:
    """Runs `predict_batch` off the event loop, up to `workers` batches at once."""

    def __init__(self, source: ModelSource | str, kind: str = "thread", workers: int = 1,
                 model: Model | None = None, native_threads: int = 1, name: str = "") -> None:
        if kind not in WORKER_KINDS:
            raise ValueError(f"worker kind {kind!r}: expected one of {', '.join(WORKER_KINDS)}")
        self.source = as_source(source)
        self.kind = kind
        self.workers = workers
        self.model = model
        self.native_threads = native_threads
        # Its metrics' labels (and its batcher's): the model's name when given.
        self.attributes = metrics.model_attributes(name)
        # Where batches run now: "thread" or "process" (auto starts on threads).
        self.active = "process" if kind == "process" else "thread"
        self._threads: ThreadPoolExecutor | None = None
        self._pool: ProcessPool | None = None
        self._meter: StallMeter | None = None
        self._since_check = 0
        self._switch: asyncio.Task[None] | None = None
        # Batches that timed out on a worker thread and have not returned since.
        self._stuck: list[concurrent.futures.Future[Any]] = []

    @property
    def stuck(self) -> bool:
        """A worker thread is still inside a batch that timed out: it cannot be reclaimed."""
        self._stuck = [f for f in self._stuck if not f.done()]
        return bool(self._stuck)

    @property
    def specs(self) -> ModelSpecs:
        """What the model says its queries and answers look like (see sdk.ModelSpecs)."""
        if self._pool is not None and self.model is None:
            return self._pool.specs
        return specs_of(self.model)

    async def start(self) -> None:
        if self.kind == "process":
            self._pool = ProcessPool(self.source, self.workers, self.native_threads)
            await self._pool.start()
            return
        if self.model is None:
            self.model = await asyncio.to_thread(self.source.load, self.native_threads)
        limit_native_threads(self.native_threads)  # for the batches run inline
        self._threads = ThreadPoolExecutor(
            self.workers, thread_name_prefix="model",
            initializer=limit_native_threads, initargs=(self.native_threads,),
        )
        if self.kind == "auto" and self.source.ref:
            self._meter = StallMeter()

    async def run(self, inputs: list[Any], expected_s: float | None = None,
                  timeout_s: float | None = None,
                  budget_s: float | None = None) -> Sequence[Any]:
        """The model's outputs for one batch; `expected_s` is its typical latency, if
        known, and `budget_s` a query's typical time budget (for `auto`).

        Raises ModelHung after `timeout_s`, WorkerDied when a worker process died.
        """
        if self.active == "process":
            assert self._pool is not None, "runner not started"
            return await self._pool.run(inputs, timeout_s)
        threads, model, meter = self._threads, self.model, self._meter
        assert threads is not None and model is not None, "runner not started"
        if self.workers == 1 and expected_s is not None and expected_s < INLINE_BELOW_S:
            if meter is not None:
                meter.inline_batch_ran()
            return model.predict_batch(inputs)
        future = threads.submit(model.predict_batch, inputs)
        if meter is not None:
            meter.thread_batch_started()
        try:
            async with asyncio.timeout(timeout_s):
                result: Sequence[Any] = await asyncio.wrap_future(future)
        except TimeoutError:
            self._stuck.append(future)
            raise ModelHung(f"the model did not answer a batch of {len(inputs)} within "
                            f"{timeout_s:.3g} s") from None
        finally:
            if meter is not None:
                meter.thread_batch_ended()
        if meter is not None:
            self._consider_processes(meter, inputs, budget_s)
        return result

    def _consider_processes(self, meter: StallMeter, inputs: list[Any],
                            budget_s: float | None) -> None:
        """Every CHECK_EVERY thread batches: start the move to processes if the stall
        would cost queries their deadlines."""
        self._since_check += 1
        if self._switch is not None or self._since_check < CHECK_EVERY:
            return
        self._since_check = 0
        stall = meter.stall()
        if stall is not None:
            logger.debug("loop lag (90th percentile) during thread batches %.2f ms, outside "
                         "%.2f ms", stall.during_s * 1000, stall.outside_s * 1000)
        if stall is None or stall.excess_s < max(MIN_STALL_S, STALL_SHARE * (budget_s or 0)):
            return
        logger.info("batches on worker threads stall the event loop: it wakes %.2f ms late "
                    "during them against %.2f ms outside (90th percentiles of %d ticks); "
                    "moving the model to %d worker process(es)", stall.during_s * 1000,
                    stall.outside_s * 1000, stall.ticks, self.workers)
        self._switch = asyncio.create_task(self._move_to_processes(list(inputs)),
                                           name="move-to-processes")

    async def _move_to_processes(self, trial: list[Any]) -> None:
        """Start warm worker processes (the model loaded, `trial` run by each) and send the
        next batches to them; stay on threads, with a warning, if they cannot serve."""
        pool = ProcessPool(self.source, self.workers, self.native_threads)
        try:
            await pool.start()
            for _ in range(self.workers):
                outputs = await pool.run(trial, TRIAL_TIMEOUT_S)
                if len(outputs) != len(trial):
                    raise WorkerLoadFailed(f"{len(outputs)} outputs for {len(trial)} inputs")
        except asyncio.CancelledError:
            pool.close()
            raise
        except Exception as exc:
            pool.close()
            logger.warning("the model stays on worker threads: it cannot run in a worker "
                           "process (%s)", exc)
            metrics.worker_switches.add(1, {**self.attributes, "to": "process",
                                            "outcome": "failed"})
        else:
            self._pool = pool
            self.active = "process"
            logger.info("the model now runs in %d worker process(es)", self.workers)
            metrics.worker_switches.add(1, {**self.attributes, "to": "process", "outcome": "ok"})
        if self._meter is not None:
            self._meter.stop()
        self._meter = None

    async def aclose(self) -> None:
        """Stop the workers without waiting for a batch still running (nor a stuck one)."""
        if self._switch is not None:
            self._switch.cancel()
            await asyncio.gather(self._switch, return_exceptions=True)
        if self._meter is not None:
            self._meter.stop()
        if self._pool is not None:
            self._pool.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
