"""Deadline-aware adaptive batching for one model replica.

Queries wait in a queue ordered by deadline. Whenever a worker is free the
batcher picks the next batch:

- **adaptive** (default): the largest batch, up to `max_batch_size`, that
  started now still finishes before the earliest deadline in it, by the online
  latency model (`latency_model.py`). While that model is unknown, AIMD on the
  maximum batch size stands in (grow by one after a batch that met its
  deadline, halve after one that missed). A query that cannot finish by its
  deadline even alone is answered as expired and never run. When the whole
  queue fits and a query is expected to arrive soon, it waits for more (up to
  `max_delay_ms` after the oldest query came), never past the point where
  the bigger batch would miss the earliest deadline.
- **fixed**: what common batchers do (a maximum size and a wait timeout): run
  when `max_batch_size` queries wait or `max_delay_ms` after the oldest came.
  Kept as the baseline the benchmarks compare against.

Admission is bounded: past `max_queue` waiting queries, or when the estimated
wait already exceeds a query's deadline, `submit` rejects at once (Overloaded)
so that the frontend can try another replica or answer with the default.

With `concurrency` above 1, up to that many batches run at once (on worker
threads or worker processes), but another starts beside a running one only when
a batch is long against the queries' time budget (`PARALLEL_ABOVE`) or a full
batch is waiting: short batches serve more queries one after another, bigger.

Faults stay with their queries. A batch the model raises on is run again by
halves, so that only the queries that make the model fail get its error. A
batch that outlives its timeout (`batch_timeout_s`, else derived from the
latency model) fails with Unavailable, which the frontend retries elsewhere; if
it leaves a worker thread stuck, the batcher turns `unhealthy`: it answers
everything queued at once and refuses the rest, and the container stops serving.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import context as otel_context

from services.common import clock, tracing
from services.common.config import flag
from services.common.errors import ClipperError, DeadlineExpired, Overloaded, Unavailable
from services.model_container import batch_trace, metrics
from services.model_container.latency_model import LatencyModel
from services.model_container.runner import ModelHung, ModelRunner, WorkerDied

logger = logging.getLogger(__name__)

BATCHING_MODES = ("adaptive", "fixed")
# A model idle this long because every query was refused as too slow for its deadline
# runs the next one anyway (a probe: a late answer the frontend ignores), so that the
# latency estimate follows a model that got faster, or was wrongly learnt while the
# process stalled. A fast probe resets the estimate (services/model_container/
# latency_model.py). At most a few late answers a second from a model really too slow;
# it was 5 s, and a model wrongly learnt as slow refused every query for minutes.
PROBE_S = 0.25
# A batch's timeout, unless set: this many times its high-quantile latency, at least
# MIN_BATCH_TIMEOUT_S; before the latency is known (the first batches may warm up).
TIMEOUT_FACTOR = 10.0
MIN_BATCH_TIMEOUT_S = 1.0
STARTUP_BATCH_TIMEOUT_S = 30.0
# With `concurrency` above 1, another batch starts beside a running one only when a
# batch of the largest size typically takes this share of a query's time budget (the
# queries queued would miss their deadlines waiting for it), or a full batch waits;
# otherwise they wait and go out as one bigger batch, which costs less per query.
PARALLEL_ABOVE = 0.25


class ModelFailed(ClipperError):
    """The model raised, or returned the wrong number of outputs, for a batch."""


@dataclass(frozen=True)
class BatchingConfig:
    """The batching flags of a container (`section(BatchingConfig)`)."""

    mode: str = flag("adaptive", "adaptive (deadline-aware) or fixed (size + timeout, a "
                     "baseline)", name="batching", choices=BATCHING_MODES)
    max_batch_size: int = flag(64, "largest batch")
    max_queue: int = flag(1024, "queries waiting past this are rejected at once")
    max_delay_ms: float = flag(10.0, "longest wait for a bigger batch after the oldest query "
                               "came")
    concurrency: int = flag(1, "batches running at once, in as many worker threads or "
                            "processes; a second starts beside a running one only when a full "
                            "batch takes over a quarter of the queries' budget or a full batch "
                            "waits")
    # Longest one batch may run before it is failed (0: derived from the latency model).
    batch_timeout_s: float = flag(0.0, "a batch running longer fails (the frontend retries "
                                  "elsewhere); a worker thread it leaves stuck stops the "
                                  "container (0: 10 times the batch's latency by the latency "
                                  "model, at least 1 s; 30 s until it is known)")

    def __post_init__(self) -> None:
        if self.mode not in BATCHING_MODES:
            raise ValueError(f"batching mode {self.mode!r}: expected one of {BATCHING_MODES}")
        for name in ("max_batch_size", "max_queue", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.max_delay_ms < 0:
            raise ValueError(f"max_delay_ms={self.max_delay_ms}: must be >= 0")
        if self.batch_timeout_s < 0:
            raise ValueError(f"batch_timeout_s={self.batch_timeout_s}: must be >= 0")


@dataclass(order=True)
class _Pending:
    deadline: float
    seq: int
    arrival: float = field(compare=False)
    input: np.ndarray = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    # Run even though it will be late: refreshes the latency of a model refused for long.
    probe: bool = field(default=False, compare=False)
    # The frontend's trace context, for a traced query (batch_trace.py).
    trace: otel_context.Context | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Load:
    """What the replica reports to frontends: its queue and expected wait."""

    queue_depth: int
    est_wait_s: float


class Batcher:
    def __init__(self, runner: ModelRunner, config: BatchingConfig | None = None,
                 latency: LatencyModel | None = None) -> None:
        self.runner = runner
        self.attributes = runner.attributes  # on its metrics too
        # Each refusal reason's labels, made once (refusals come per query past capacity).
        self._refused = {reason: {**self.attributes, "reason": reason} for reason in
                         ("unhealthy", "shutting_down", "expired", "overloaded")}
        self.config = config or BatchingConfig()
        self.latency = latency or LatencyModel()
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent sizes, for tests and metrics
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._busy = 0
        self._running_until: list[float] = []
        self._aimd_cap = 1.0
        self._interarrival_s = math.inf
        self._last_arrival: float | None = None
        self._budget_s: float | None = None  # a query's typical time budget on arrival
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._draining = False
        self._last_finished = -math.inf
        # Set, with the reason, once a worker is stuck: the container must be restarted.
        self.unhealthy = asyncio.Event()
        self.unhealthy_reason = ""

    @property
    def queue_depth(self) -> int:
        return len(self._heap)

    async def start(self) -> None:
        await self.runner.start()
        self._last_finished = clock.now()
        self._worker = asyncio.create_task(self._run(), name="batcher")
        self._worker.add_done_callback(_log_failure)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new queries (Unavailable: the frontend asks another replica) and wait up
        to `timeout_s` for the queued and running ones to be answered. True if all were."""
        self._draining = True
        self._wakeup.set()  # a batch held for more queries goes now
        pending: list[asyncio.Future[Any]] = [item.future for item in self._heap]
        pending.extend(self._tasks)
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=timeout_s)
            return not not_done
        return True

    async def aclose(self) -> None:
        tasks = [t for t in (self._worker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for item in self._heap:
            if not item.future.done():
                item.future.set_exception(ClipperError("container is shutting down"))
        self._heap.clear()
        await self.runner.aclose()

    # ------------------------------------------------------------ admission

    def submit(self, value: np.ndarray, deadline: float,
               trace: otel_context.Context | None = None) -> asyncio.Future[Any]:
        """Queue one query; its future resolves to the model's output for it (`trace`: the
        frontend's trace context, when the query is traced)."""
        loop = asyncio.get_running_loop()
        now = clock.now()
        if self.unhealthy.is_set():
            metrics.refused.add(1, self._refused["unhealthy"])
            raise Unavailable(f"replica is unhealthy: {self.unhealthy_reason}")
        if self._draining:
            metrics.refused.add(1, self._refused["shutting_down"])
            raise Unavailable("replica is shutting down")
        if deadline <= now:
            metrics.refused.add(1, self._refused["expired"])
            raise DeadlineExpired("query arrived after its deadline")
        if len(self._heap) >= self.config.max_queue:
            metrics.refused.add(1, self._refused["overloaded"])
            raise Overloaded(f"queue full ({self.config.max_queue} queries waiting)")
        probe = False
        if self.config.mode == "adaptive":
            wait_s = self.estimated_wait(now)
            if wait_s is not None and now + wait_s > deadline:
                if self._idle_for(now) <= PROBE_S:
                    metrics.refused.add(1, self._refused["overloaded"])
                    raise Overloaded(
                        f"estimated wait {wait_s * 1000:.1f} ms exceeds the "
                        f"{(deadline - now) * 1000:.1f} ms left"
                    )
                probe = True  # refused for long: run one anyway, to see if it got faster
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._interarrival_s = (gap if math.isinf(self._interarrival_s)
                                    else 0.8 * self._interarrival_s + 0.2 * gap)
        self._last_arrival = now
        budget = deadline - now
        self._budget_s = budget if self._budget_s is None else 0.9 * self._budget_s + 0.1 * budget
        future: asyncio.Future[Any] = loop.create_future()
        heapq.heappush(self._heap, _Pending(deadline, next(self._seq), now, value, future, probe,
                                            trace))
        self._wakeup.set()
        return future

    def _idle_for(self, now: float) -> float:
        """How long the model has been idle with nothing queued (0 when it is not)."""
        if self._busy or self._heap:
            return 0.0
        return now - self._last_finished

    def estimated_wait(self, now: float) -> float | None:
        """Typical time until a query queued now is answered; None while the model is unknown.

        Typical, not a high quantile: a query is refused only when it would most
        likely be late, not whenever it might be.
        """
        cfg = self.config
        size = min(len(self._heap) + 1, cfg.max_batch_size)
        batch_s = self.latency.typical(size)
        if batch_s is None:
            return None
        batches_ahead = math.ceil((len(self._heap) + 1) / cfg.max_batch_size)
        running_s = 0.0
        if self._busy >= cfg.concurrency and self._running_until:
            running_s = max(0.0, min(self._running_until) - now)
        return running_s + batches_ahead * batch_s / cfg.concurrency

    def load(self) -> Load:
        return Load(len(self._heap), self.estimated_wait(clock.now()) or 0.0)

    # ------------------------------------------------------------ the worker

    async def _run(self) -> None:
        while True:
            if not self._heap or self._busy >= self._slots():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = clock.now()
            plan = self._plan_fixed(now) if self.config.mode == "fixed" else self._plan(now)
            if isinstance(plan, float):
                self._wakeup.clear()
                try:
                    async with asyncio.timeout_at(plan):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
                continue
            if plan:
                self._dispatch(plan, now)

    def _slots(self) -> int:
        """How many batches may run at once now (see PARALLEL_ABOVE)."""
        cfg = self.config
        if cfg.concurrency == 1 or len(self._heap) >= cfg.max_batch_size:
            return cfg.concurrency
        full_s = self.latency.typical(cfg.max_batch_size)
        if full_s is None or self._budget_s is None or full_s > PARALLEL_ABOVE * self._budget_s:
            return cfg.concurrency
        return 1

    def _plan(self, now: float) -> list[_Pending] | float:
        """The next adaptive batch, or the time to wait until for a bigger one."""
        cfg = self.config
        self._expire_hopeless(now)
        if not self._heap:
            return []
        if not self.latency.known:
            return self._pop(max(1, min(cfg.max_batch_size, int(self._aimd_cap))))
        # Candidates in deadline order. A batch starting at the i-th is bounded by that
        # query's deadline; start where the batch can be largest (the oldest such).
        # Under overload this skips the few oldest queries, which could only go out
        # in tiny batches, instead of letting them shrink every batch (and goodput).
        window = heapq.nsmallest(min(len(self._heap), 4 * cfg.max_batch_size), self._heap)
        start, size = self._best_batch(window, now, typical=False)
        if size == 0:
            # Nothing fits the high-quantile estimate (a noisy machine inflates it): size
            # by the typical latency rather than fall back to batches of one.
            start, size = self._best_batch(window, now, typical=True)
        if size == 0:
            start, size = 0, 1
        if start == 0 and size == len(self._heap) and size < cfg.max_batch_size:
            hold_until = self._hold_until(size, window[0].deadline)
            if hold_until > now:
                return hold_until
        if start == 0:  # the usual case: the `size` earliest deadlines
            batch = [heapq.heappop(self._heap) for _ in range(size)]
        else:
            batch = window[start:start + size]
            taken = {id(item) for item in batch}
            self._heap = [item for item in self._heap if id(item) not in taken]
            heapq.heapify(self._heap)
        return [item for item in batch if not item.future.done()]  # callers may have left

    def _best_batch(self, window: list[_Pending], now: float, typical: bool) -> tuple[int, int]:
        """(start, size) of the largest batch of consecutive queries that fits its deadline."""
        cap = self.config.max_batch_size
        start, size = 0, 0
        for i, item in enumerate(window):
            if size >= len(window) - i:
                break  # no later start can make a bigger batch
            fits = self.latency.largest_within(item.deadline - now,
                                               min(cap, len(window) - i), typical)
            if fits > size:
                start, size = i, fits
        return start, size

    def _hold_until(self, size: int, earliest: float) -> float:
        """When to stop waiting for more queries (a time in the past: do not wait).

        The whole queue fits. If queries arrive faster than a batch this size serves
        them, running it now would keep the model ever busier with small batches: hold
        for more, spending at most half the slack of the oldest query, so that the rest
        absorbs a batch that runs long, and never past `max_delay_ms`.
        """
        cfg = self.config
        typical = self.latency.typical(size) or 0.0
        if self._draining or cfg.max_delay_ms <= 0 or size * self._interarrival_s >= typical:
            return 0.0
        oldest = min(item.arrival for item in self._heap)
        latest_start = earliest - self._estimate(size + 1)
        return min(oldest + cfg.max_delay_ms / 1000, oldest + (latest_start - oldest) / 2)

    def _plan_fixed(self, now: float) -> list[_Pending] | float:
        cfg = self.config
        live = sum(not item.future.done() for item in self._heap)
        if live < cfg.max_batch_size and cfg.max_delay_ms > 0:
            oldest = min(item.arrival for item in self._heap)
            if now < oldest + cfg.max_delay_ms / 1000:
                return oldest + cfg.max_delay_ms / 1000
        return self._pop(cfg.max_batch_size)

    def _estimate(self, size: int) -> float:
        estimate = self.latency.estimate(size)
        assert estimate is not None
        return estimate

    def _expire_hopeless(self, now: float) -> None:
        """Answer as expired the queries at the head that cannot finish even alone."""
        alone = self.latency.typical(1) or 0.0
        while self._heap:
            head = self._heap[0]
            if head.future.done():
                heapq.heappop(self._heap)
            elif head.deadline <= now + alone and not head.probe:
                heapq.heappop(self._heap)
                metrics.refused.add(1, self._refused["expired"])
                head.future.set_exception(
                    DeadlineExpired("cannot finish before its deadline; not run")
                )
            else:
                return

    def _pop(self, size: int) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._heap and len(batch) < size:
            item = heapq.heappop(self._heap)
            if not item.future.done():  # the caller may have given up
                batch.append(item)
        return batch

    def _dispatch(self, batch: list[_Pending], now: float) -> None:
        self._busy += 1
        expected_end = now + (self.latency.typical(len(batch)) or 0.0)
        self._running_until.append(expected_end)
        task = asyncio.create_task(self._run_batch(batch, expected_end, now))
        self._tasks.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._busy -= 1
        self._wakeup.set()
        _log_failure(task)

    def batch_timeout_s(self, size: int) -> float:
        """How long a batch of `size` may run before it is failed as hung."""
        if self.config.batch_timeout_s > 0:
            return self.config.batch_timeout_s
        estimate = self.latency.estimate(size)
        if estimate is None:
            return STARTUP_BATCH_TIMEOUT_S
        return max(MIN_BATCH_TIMEOUT_S, TIMEOUT_FACTOR * estimate)

    async def _attempt(self, batch: list[_Pending]) -> list[Any]:
        """The model's outputs for `batch`, or its exception (ModelFailed: wrong count)."""
        size = len(batch)
        outputs = await self.runner.run([item.input for item in batch],
                                        self.latency.typical(size), self.batch_timeout_s(size),
                                        self._budget_s)
        if len(outputs) != size:
            raise ModelFailed(f"model returned {len(outputs)} outputs for a batch of {size}")
        return list(outputs)

    async def _run_batch(self, batch: list[_Pending], expected_end: float,
                         formed_at: float) -> None:
        started = clock.now()
        traced = tracing.enabled and any(item.trace for item in batch)
        try:
            outputs = await self._attempt(batch)
        except (ModelHung, WorkerDied) as exc:
            if traced:
                batch_trace.record_batch(batch, formed_at, started, clock.now(),
                                         expected_end - formed_at, exc.message)
            self._worker_failed(batch, exc)
            return
        except Exception as exc:
            if traced:
                batch_trace.record_batch(batch, formed_at, started, clock.now(),
                                         expected_end - formed_at, f"model raised {exc!r}")
            logger.warning("model raised on a batch of %d: %r; running it by halves",
                           len(batch), exc)
            await self._by_halves(batch, exc)
            return
        finally:
            self._running_until.remove(expected_end)
        _answer(batch, outputs)
        finished = self._last_finished = clock.now()
        self.latency.observe(len(batch), finished - started,
                             probe=any(item.probe for item in batch))
        self.batch_sizes.append(len(batch))
        metrics.batch_size.record(len(batch), self.attributes)
        metrics.batch_duration.record((finished - started) * 1000, self.attributes)
        if traced:
            batch_trace.record_batch(batch, formed_at, started, finished,
                                     expected_end - formed_at)
        for item in batch:
            metrics.queue_delay.record((started - item.arrival) * 1000, self.attributes)
        met = finished <= min(item.deadline for item in batch)
        cap = self.config.max_batch_size
        self._aimd_cap = min(cap, self._aimd_cap + 1) if met else max(1.0, self._aimd_cap / 2)

    async def _by_halves(self, batch: list[_Pending], error: Exception) -> None:
        """Run a batch the model raised on again by halves, until each query that makes
        the model fail is alone: only those get the model's error."""
        live = [item for item in batch if not item.future.done()]
        now = clock.now()
        for item in [item for item in live if item.deadline <= now]:
            item.future.set_exception(DeadlineExpired("expired while its batch was retried"))
        live = [item for item in live if item.deadline > now]
        if len(live) <= 1:
            _fail(live, error if isinstance(error, ModelFailed) else
                  ModelFailed(f"model raised {type(error).__name__}: {error}"))
            return
        middle = len(live) // 2
        for half in (live[:middle], live[middle:]):
            try:
                _answer(half, await self._attempt(half))
            except (ModelHung, WorkerDied) as exc:
                self._worker_failed(half, exc)
            except Exception as exc:
                await self._by_halves(half, exc)

    def _worker_failed(self, batch: list[_Pending], exc: ModelHung | WorkerDied) -> None:
        """Fail the batch (the frontend retries elsewhere); a stuck worker thread makes
        the replica unhealthy."""
        _fail(batch, exc)
        if self.runner.stuck:
            self._turn_unhealthy(exc.message)

    def _turn_unhealthy(self, reason: str) -> None:
        """A worker is stuck for good: answer every queued query now (Unavailable, so the
        frontend asks another replica), refuse new ones, and tell the container."""
        if self.unhealthy.is_set():
            return
        logger.error("replica unhealthy: %s", reason)
        self.unhealthy_reason = reason
        self.unhealthy.set()
        queued, self._heap = self._heap, []
        _fail(queued, Unavailable(f"replica is unhealthy: {reason}"))


def _answer(batch: list[_Pending], outputs: list[Any]) -> None:
    for item, output in zip(batch, outputs, strict=True):
        if not item.future.done():
            item.future.set_result(output)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("batcher task failed", exc_info=task.exception())
