"""A partition: one of two replicas stops answering (SIGSTOP) under steady load.

The frontend's registry is given a long replica TTL, so that what is tested is the
frontend's own detection on the query path (a partition between a frontend and a
replica need not stop the replica's heartbeats): queries the stopped replica holds
are asked again of the other one within their deadline, the stopped replica is
ejected as an outlier, keepalive finds its connection dead, and after SIGCONT it
reconnects and answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from services.common import tensors
from services.common.processes import ServiceProcess
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh

SLO_S = 1.0
_inputs = itertools.count()
DEFAULT = tensors.encode(np.array([-1.0, -1.0]))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("partition"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--replica-ttl-s", "300")
        mesh.start_container("tests.helpers.models:SumAndPid", "part")
        mesh.start_container("tests.helpers.models:SumAndPid", "part")
        mesh.create_app("part", ["part"], slo_ms=int(SLO_S * 1000), default=DEFAULT)
        mesh.wait_connected("part", 2)
        yield mesh
    finally:
        mesh.close()


@dataclass
class Load:
    """What a run of steady load saw: (latency, sum asked, reply) per query."""

    replies: list[tuple[float, float, pb.PredictResponse]] = field(default_factory=list)

    @property
    def pids(self) -> set[int]:
        return {int(tensors.decode(r.output)[1]) for _, _, r in self.replies
                if not r.default_used}

    def check_answers(self) -> None:
        """Every query answered in time by a model (no default), with its own sum."""
        defaults = [r.default_reason for _, _, r in self.replies if r.default_used]
        assert not defaults, f"{len(defaults)} defaults of {len(self.replies)}: {defaults[:3]}"
        for latency_s, asked, reply in self.replies:
            assert tensors.decode(reply.output)[0] == asked
            assert latency_s < SLO_S + 0.5


async def run_load(stub: pb_grpc.FrontendStub, done: Callable[[Load], bool],
                   min_queries: int, max_queries: int, max_s: float) -> Load:
    """Four clients, one query at a time each, distinct inputs, until `done` holds after
    at least `min_queries` (or `max_queries`, or `max_s`)."""
    load = Load()
    stop_at = time.monotonic() + max_s
    sent = 0

    async def client() -> None:
        nonlocal sent
        while sent < max_queries and time.monotonic() < stop_at and not (
                len(load.replies) >= min_queries and done(load)):
            sent += 1
            value = np.array([next(_inputs), 1, 2, 3], np.float32)  # never a cached one
            started = time.monotonic()
            reply = await stub.Predict(
                pb.PredictRequest(application="part", input=tensors.encode(value)), timeout=5)
            load.replies.append((time.monotonic() - started, float(value.sum()), reply))

    await asyncio.gather(*(client() for _ in range(4)))
    return load


async def replica_state(mesh: Mesh, proc: ServiceProcess) -> pb.Replica:
    replicas = await asyncio.to_thread(mesh.replicas, "part")
    return next(r for r in replicas if r.address == proc.address)


async def wait_for(mesh: Mesh, proc: ServiceProcess, check: Callable[[pb.Replica], bool],
                   timeout_s: float) -> pb.Replica:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = await replica_state(mesh, proc)
        if check(state):
            return state
        await asyncio.sleep(0.1)
    raise TimeoutError(f"replica at {proc.address}: {state}")


async def test_a_stopped_replica_is_routed_around_ejected_and_recovered(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    stopped, other = [p for p in mesh.procs if p.name.startswith("part")]
    both = {stopped.proc.pid, other.proc.pid}
    warm = await run_load(stub, lambda load: load.pids == both, 20, 2000, 30)
    warm.check_answers()
    assert warm.pids == both

    os.kill(stopped.proc.pid, signal.SIGSTOP)
    try:
        ejected = asyncio.Event()

        async def watch_ejection() -> None:
            await wait_for(mesh, stopped, lambda r: r.ejected_ms > 0, 30)
            ejected.set()

        watcher = asyncio.create_task(watch_ejection())
        during = await run_load(stub, lambda _: ejected.is_set(), 200, 3000, 30)
        await watcher  # raises if it was never ejected
        during.check_answers()  # queries it held were answered by the other in time
        assert during.pids == {other.proc.pid}

        # Keepalive: the connection to a process that cannot answer its pings is dropped.
        await wait_for(mesh, stopped, lambda r: not r.connected, 45)
    finally:
        os.kill(stopped.proc.pid, signal.SIGCONT)

    await wait_for(mesh, stopped, lambda r: r.connected and r.ejected_ms == 0, 30)
    after = await run_load(stub, lambda load: stopped.proc.pid in load.pids, 20, 2000, 30)
    after.check_answers()
    assert stopped.proc.pid in after.pids  # it is asked again, and answers
    assert stopped.proc.poll() is None
