"""Load generators over gRPC: open-loop (Poisson arrivals) and closed-loop (fixed concurrency).

Open-loop latency is measured from each query's scheduled arrival, or from when
it was sent if that was earlier, so a generator running late charges its delay
to the server rather than hiding it (no coordinated omission). asyncio rounds
timer waits up to whole milliseconds, so the generator wakes that much early
instead of a fraction of a millisecond late. Every run is bounded by a
duration and a count, and the generator's garbage collector waits until it ends
(its pauses would count as the server's latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from services.common import clock
from services.common.errors import ClipperError
from services.frontend.records import ReplicaRecord
from services.frontend.replica_client import ReplicaClient
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc


@dataclass
class Outcome:
    """One query: when it was due, how long it took, and whether it was a real answer."""

    sent_at: float
    latency_s: float
    ok: bool
    queue_depth: int = 0


@dataclass
class RunResult:
    offered_qps: float
    duration_s: float
    slo_s: float
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.outcomes)

    @property
    def throughput_qps(self) -> float:
        return self.count / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.outcomes:
            return float("inf")
        # A failed query counts as infinitely late.
        lat = [o.latency_s if o.ok else float("inf") for o in self.outcomes]
        return float(np.percentile(lat, q, method="higher")) * 1000

    @property
    def within_slo(self) -> float:
        """Share of queries answered for real within the SLO."""
        good = sum(o.ok and o.latency_s <= self.slo_s for o in self.outcomes)
        return good / self.count if self.count else 0.0

    @property
    def goodput_qps(self) -> float:
        return self.within_slo * self.throughput_qps


Send = Callable[[], Awaitable[tuple[bool, int]]]

# asyncio's selector rounds a timeout up to the next millisecond.
TIMER_SLACK_S = 0.001


async def _attempt(send: Send) -> tuple[bool, int]:
    """One query through `send`; a call that fails counts as (not ok, queue depth 0)."""
    try:
        return await send()
    except grpc.aio.AioRpcError:
        return False, 0


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage-collector pause in this process while a timed run goes on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def open_loop(send: Send, rate_qps: float, duration_s: float, slo_s: float,
                    seed: int = 0, max_queries: int = 200_000) -> RunResult:
    """Poisson arrivals at `rate_qps` for `duration_s`; waits for the stragglers (bounded)."""
    return await open_loop_profile(send, lambda _t: rate_qps, duration_s, slo_s, seed,
                                   max_queries)


async def open_loop_profile(send: Send, rate_at: Callable[[float], float], duration_s: float,
                            slo_s: float, seed: int = 0,
                            max_queries: int = 200_000) -> RunResult:
    """Poisson arrivals whose rate follows `rate_at(seconds since start)`."""
    rng = np.random.default_rng(seed)
    loop = asyncio.get_running_loop()
    start = loop.time()
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        started = min(loop.time(), due)
        ok, depth = await _attempt(send)
        outcomes.append(Outcome(due - start, loop.time() - started, ok, depth))

    due, sent = start, 0
    with _collector_paused():
        while sent < max_queries:
            due += rng.exponential(1.0 / max(rate_at(due - start), 1e-6))
            if due - start >= duration_s:
                break
            delay = due - loop.time()
            if delay > TIMER_SLACK_S:
                await asyncio.sleep(delay - TIMER_SLACK_S)
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=slo_s * 5 + 2)
    for task in tasks:
        task.cancel()
    offered = sent / duration_s
    return RunResult(offered, duration_s, slo_s, outcomes)


async def settle(send: Send, slo_s: float, limit_s: float = 10.0) -> None:
    """Wait (at most `limit_s`) until the server has worked off what an earlier run left
    queued: a lone query comes back in time with nothing queued behind it. A batcher that
    runs expired queries (batch size 1, fixed) can hold seconds of them after an overload."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit_s
    while loop.time() < give_up:
        started = loop.time()
        ok, depth = await _attempt(send)
        if ok and depth == 0 and loop.time() - started <= slo_s:
            return
        await asyncio.sleep(0.1)


async def closed_loop(send: Send, concurrency: int, duration_s: float,
                      slo_s: float) -> RunResult:
    """`concurrency` workers, each sending its next query when the last one returns."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while loop.time() - start < duration_s:
            sent = loop.time()
            ok, depth = await _attempt(send)
            outcomes.append(Outcome(sent - start, loop.time() - sent, ok, depth))

    with _collector_paused():
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = loop.time() - start
    return RunResult(len(outcomes) / elapsed, elapsed, slo_s, outcomes)


class ContainerStream:
    """Queries straight to one container's stream, sent by the frontend's own ReplicaClient."""

    def __init__(self, address: str, credential: str, value: np.ndarray, slo_s: float) -> None:
        from services.common import tensors

        self.input = tensors.encode(value)
        self.slo_s = slo_s
        self._client = ReplicaClient(ReplicaRecord("bench", "bench", "1", address), credential)

    async def __aenter__(self) -> ContainerStream:
        await self._client.start()
        async with asyncio.timeout(10):
            await self._client.wait_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def send(self) -> tuple[bool, int]:
        deadline = clock.now() + self.slo_s  # the clock ReplicaClient counts budgets on
        try:
            await self._client.query(self.input, deadline)
            ok = True
        except ClipperError:
            ok = False  # expired, refused or failed: counted as late
        return ok, self._client.queue_depth


class FrontendUnary:
    """Unary Predict calls to the frontend, spread over a few channels."""

    def __init__(self, address: str, application: str, value: np.ndarray,
                 channels: int = 4) -> None:
        from services.common import tensors

        self.request = pb.PredictRequest(application=application, input=tensors.encode(value))
        self._channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(channels)
        ]
        self._stubs = itertools.cycle([pb_grpc.FrontendStub(c) for c in self._channels])

    async def __aenter__(self) -> FrontendUnary:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close()

    async def send(self) -> tuple[bool, int]:
        reply = await next(self._stubs).Predict(self.request, timeout=5)
        return not reply.default_used, 0

