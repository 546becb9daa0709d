"""Load generators over gRPC: open-loop (Poisson arrivals) and closed-loop (fixed concurrency).

Open-loop latency is measured from each query's scheduled arrival, so a slow
server cannot hide its queueing by slowing the generator (no coordinated
omission). Every run is bounded by a duration and a count.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from services.common.auth import bearer
from services.common.streams import pump
from services.frontend.replica_client import REPLY_RESERVE_S
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
        try:
            ok, depth = await send()
        except grpc.aio.AioRpcError:
            ok, depth = False, 0
        outcomes.append(Outcome(due - start, loop.time() - due, ok, depth))

    due, sent = start, 0
    while sent < max_queries:
        due += rng.exponential(1.0 / max(rate_at(due - start), 1e-6))
        if due - start >= duration_s:
            break
        delay = due - loop.time()
        if delay > 0.0005:
            await asyncio.sleep(delay)
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


async def closed_loop(send: Send, concurrency: int, duration_s: float,
                      slo_s: float) -> RunResult:
    """`concurrency` workers, each sending its next query when the last one returns."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    outcomes: list[Outcome] = []

    async def worker() -> None:
        while loop.time() - start < duration_s:
            sent = loop.time()
            try:
                ok, depth = await send()
            except grpc.aio.AioRpcError:
                ok, depth = False, 0
            outcomes.append(Outcome(sent - start, loop.time() - sent, ok, depth))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = loop.time() - start
    return RunResult(len(outcomes) / elapsed, elapsed, slo_s, outcomes)


class ContainerStream:
    """Queries straight to one container over its bidi stream, as a frontend sends them."""

    def __init__(self, address: str, token: str, value: np.ndarray, slo_s: float) -> None:
        from services.common import tensors

        self.address = address
        self.token = token
        self.input = tensors.encode(value)
        self.slo_s = slo_s
        self._pending: dict[int, asyncio.Future[tuple[pb.ContainerReply, int]]] = {}
        self._ids = itertools.count(1)
        self._outbox: asyncio.Queue[pb.ContainerQuery] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ContainerStream:
        self._channel = grpc.aio.insecure_channel(self.address)
        self._call = pb_grpc.ModelContainerStub(self._channel).Predict(
            metadata=bearer(self.token))
        self._tasks = [asyncio.create_task(pump(self._outbox, self._call, _container_request)),
                       asyncio.create_task(self._read())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._call.cancel()
        await self._channel.close()

    async def _read(self) -> None:
        async for response in self._call:
            for reply in response.replies:
                future = self._pending.pop(reply.id, None)
                if future is not None and not future.done():
                    future.set_result((reply, response.load.queue_depth))

    async def send(self) -> tuple[bool, int]:
        query_id = next(self._ids)
        future: asyncio.Future[tuple[pb.ContainerReply, int]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[query_id] = future
        budget_s = self.slo_s - REPLY_RESERVE_S  # what a frontend would give it
        self._outbox.put_nowait(pb.ContainerQuery(
            id=query_id, input=self.input, budget_us=int(budget_s * 1e6)))
        reply, depth = await future
        return reply.WhichOneof("result") == "output", depth


def _container_request(queries: list[pb.ContainerQuery]) -> pb.ContainerRequest:
    return pb.ContainerRequest(queries=queries)


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

