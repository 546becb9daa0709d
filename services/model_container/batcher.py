"""Batches queries for one model replica and runs the model off the event loop.

Queries wait in a queue ordered by deadline. The worker takes up to
`max_batch_size` of them at a time (those already past their deadline are
answered as expired, never run), runs `predict_batch` in a worker thread, and
resolves each query's future with its own output. One batch runs at a time.
The queue is bounded: past `max_queue` waiting queries, `submit` rejects at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.errors import ClipperError, DeadlineExpired, Overloaded
from services.model_container.sdk import Model

logger = logging.getLogger(__name__)


class ModelFailed(ClipperError):
    """The model raised, or returned the wrong number of outputs, for a batch."""


@dataclass(order=True)
class _Pending:
    deadline: float
    seq: int
    input: np.ndarray = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)


class Batcher:
    """Deadline-ordered, bounded queue feeding one model, a batch at a time."""

    def __init__(self, model: Model, max_batch_size: int = 32, max_queue: int = 1024) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._heap)

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._worker = asyncio.create_task(self._run(), name="batcher")

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for item in self._heap:
            if not item.future.done():
                item.future.set_exception(ClipperError("container is shutting down"))
        self._heap.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, value: np.ndarray, deadline: float) -> asyncio.Future[Any]:
        """Queue one query; its future resolves to the model's output for it."""
        loop = asyncio.get_running_loop()
        if deadline <= loop.time():
            raise DeadlineExpired("query arrived after its deadline")
        if len(self._heap) >= self.max_queue:
            raise Overloaded(f"queue full ({self.max_queue} queries waiting)")
        future: asyncio.Future[Any] = loop.create_future()
        heapq.heappush(self._heap, _Pending(deadline, next(self._seq), value, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take_batch(loop.time())
            if batch:
                await self._run_batch(loop, batch)

    def _take_batch(self, now: float) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._heap and len(batch) < self.max_batch_size:
            item = heapq.heappop(self._heap)
            if item.future.done():
                continue  # the caller gave up
            if item.deadline <= now:
                item.future.set_exception(DeadlineExpired("deadline passed while queued"))
                continue
            batch.append(item)
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        inputs = [item.input for item in batch]
        try:
            outputs = await loop.run_in_executor(self._executor, self.model.predict_batch, inputs)
            if len(outputs) != len(batch):
                raise ModelFailed(
                    f"model returned {len(outputs)} outputs for a batch of {len(batch)}"
                )
        except ModelFailed as exc:
            self._fail(batch, exc)
        except Exception as exc:
            logger.warning("model raised on a batch of %d: %r", len(batch), exc)
            self._fail(batch, ModelFailed(f"model raised {type(exc).__name__}: {exc}"))
        else:
            for item, output in zip(batch, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(output)

    @staticmethod
    def _fail(batch: list[_Pending], exc: ClipperError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)
