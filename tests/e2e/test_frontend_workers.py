"""`--workers 2`: two frontend processes on one port, sharing a real redis-server.

Which worker a connection lands on is the kernel's choice; each test finds out
through the workers' own metrics (every worker logs its metrics port).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.metrics import sample, scrape
from services.common.processes import REPO_ROOT, ServiceProcess
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import ENV, MGMT, Mesh
from tests.helpers.redis_server import RedisServer
from tests.helpers.served import served_within

WORKER_SERVES = re.compile(r"frontend worker (\d+) \(pid (\d+)\) serves port")
WORKER_METRICS = re.compile(r"frontend-worker-(\d+) \S+: metrics at http://\S+:(\d+)/metrics")
MAX_CHANNELS = 32  # connections tried before concluding they all land on one worker
# gRPC shares one connection among a process's channels to the same address, unless
# each keeps its own subchannels.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Workers:
    mesh: Mesh
    frontend: ServiceProcess
    log: Path

    def _latest(self, pattern: re.Pattern[str]) -> dict[int, int]:
        """Worker index -> the number its latest matching log line holds."""
        found: dict[int, int] = {}
        for match in pattern.finditer(self.log.read_text()):
            found[int(match.group(1))] = int(match.group(2))
        return found

    def pids(self) -> dict[int, int]:
        return self._latest(WORKER_SERVES)

    def answered(self) -> dict[int, float]:
        """Queries each worker has answered, by its metrics."""
        return {index: sample(scrape(port), "clipper_queries_total")
                for index, port in self._latest(WORKER_METRICS).items()}

    def taken(self) -> float:
        """Queries the workers have answered or are answering (their handlers have them)."""
        total = 0.0
        for port in self._latest(WORKER_METRICS).values():
            samples = scrape(port)
            total += (sample(samples, "clipper_queries_total")
                      + sample(samples, "clipper_admission_queries", of="inflight"))
        return total


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    workdir = tmp_path_factory.mktemp("workers")
    redis = RedisServer(workdir / "redis").start()
    mesh = Mesh(workdir)
    try:
        mesh.start_selection(state=redis.url)
        # State and prediction cache on the one Redis (every query has its own input).
        frontend = mesh.start_frontend("--workers", "2", "--cache", redis.url,
                                       "--metrics-port", "0", state=redis.url)
        mesh.start_container("tests.helpers.models:TenMsPerBatch", "work", "1",
                             "--max-batch-size", "1")
        mesh.create_app("work", ["work"], slo_ms=3000)
        for _ in range(4):  # ListReplicas lands on either worker: both see it connected
            mesh.wait_connected("work", 1)
        yield Workers(mesh, frontend, workdir / f"{frontend.name}.log")
    finally:
        mesh.close()
        redis.stop()


def query(value: float, app: str = "work") -> pb.PredictRequest:
    return pb.PredictRequest(application=app,
                             input=tensors.encode(np.full(4, value, np.float32)))


@asynccontextmanager
async def channel_per_worker(workers: Workers) -> AsyncIterator[dict[int, grpc.aio.Channel]]:
    """An open connection to each worker: new connections until each has answered one."""
    found: dict[int, grpc.aio.Channel] = {}
    opened: list[grpc.aio.Channel] = []
    try:
        for i in range(MAX_CHANNELS):
            channel = grpc.aio.insecure_channel(workers.mesh.address, OWN_CONNECTION)
            opened.append(channel)
            before = await asyncio.to_thread(workers.answered)
            reply = await pb_grpc.FrontendStub(channel).Predict(query(float(i)), timeout=5)
            assert tensors.decode(reply.output).item() == 4.0 * i
            after = await asyncio.to_thread(workers.answered)
            landed = [w for w in after if after[w] > before.get(w, 0.0)]
            assert len(landed) == 1, (before, after)
            found.setdefault(landed[0], channel)
            if len(found) == 2:
                break
        assert len(found) == 2, f"{MAX_CHANNELS} connections all landed on worker {found}"
        yield found
    finally:
        for channel in opened:
            await channel.close()


async def test_connections_land_on_both_workers(workers: Workers) -> None:
    assert set(workers.pids()) == {0, 1}
    async with channel_per_worker(workers) as channels:
        assert set(channels) == {0, 1}


async def test_an_application_created_through_one_worker_is_served_by_the_other(
        workers: Workers) -> None:
    async with channel_per_worker(workers) as channels:
        for via, other, app in ((0, 1, "made-on-0"), (1, 0, "made-on-1")):
            application = pb.Application(
                name=app, input_spec=pb.TensorSpec(dtype="float32", shape=[4]), slo_ms=3000,
                policy="static", linked_models=["work"])
            await pb_grpc.ManagementStub(channels[via]).CreateApplication(
                pb.ApplicationRequest(application=application), metadata=MGMT, timeout=5)
            ask = functools.partial(pb_grpc.FrontendStub(channels[other]).Predict,
                                    query(1.0, app), timeout=5)
            assert await served_within(ask, app, 2.0) < 2.0


async def test_a_killed_worker_leaves_the_other_serving_and_is_started_again(
        workers: Workers) -> None:
    victim = workers.pids()[1]
    os.kill(victim, signal.SIGKILL)
    exited = re.compile(rf"frontend worker 1 \(pid {victim}\) exited \(killed by SIGKILL\): "
                        r"the others serve")
    deadline = time.monotonic() + 10
    while not exited.search(workers.log.read_text()):  # its sockets are closed by then
        assert time.monotonic() < deadline, "the pool did not report the killed worker"
        await asyncio.sleep(0.05)
    # New connections go to the worker left: the kernel spreads them over live sockets.
    for i in range(10):
        async with grpc.aio.insecure_channel(workers.mesh.address, OWN_CONNECTION) as channel:
            reply = await pb_grpc.FrontendStub(channel).Predict(query(float(i)), timeout=5)
            assert tensors.decode(reply.output).item() == 4.0 * i
    deadline = time.monotonic() + 30
    while workers.pids()[1] == victim:
        assert time.monotonic() < deadline, "worker 1 was not started again within 30 s"
        await asyncio.sleep(0.1)
    async with channel_per_worker(workers) as channels:  # both serve again
        assert set(channels) == {0, 1}


async def test_a_restarted_worker_takes_connections_once_its_streams_are_up(
        workers: Workers) -> None:
    victim = workers.pids()[1]
    os.kill(victim, signal.SIGKILL)
    exited = re.compile(rf"frontend worker 1 \(pid {victim}\) exited")
    deadline = time.monotonic() + 10
    while not exited.search(workers.log.read_text()):
        assert time.monotonic() < deadline, "the pool did not report the killed worker"
        await asyncio.sleep(0.05)
    failures: list[str] = []
    answered = 0
    restarted = asyncio.Event()

    async def keep_asking(offset: int) -> None:
        """A query on a new connection at a time until the worker is back, and a while
        after: some land on the new worker as soon as it takes connections."""
        nonlocal answered
        for i in itertools.count(offset, 4):
            if restarted.is_set() and answered >= 200:
                return
            async with grpc.aio.insecure_channel(workers.mesh.address,
                                                 OWN_CONNECTION) as channel:
                try:
                    reply = await pb_grpc.FrontendStub(channel).Predict(query(float(i)),
                                                                        timeout=5)
                    assert tensors.decode(reply.output).item() == 4.0 * i
                    answered += 1
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

    askers = [asyncio.create_task(keep_asking(k)) for k in range(4)]
    try:
        deadline = time.monotonic() + 30
        while workers.pids()[1] == victim:
            assert time.monotonic() < deadline, "worker 1 was not started again within 30 s"
            await asyncio.sleep(0.05)
        restarted.set()
        await asyncio.wait_for(asyncio.gather(*askers), 60)
    finally:
        for task in askers:
            task.cancel()
    assert failures == []


async def test_sigterm_drains_both_workers_and_loses_no_query(workers: Workers) -> None:
    async with channel_per_worker(workers) as channels:
        stubs = [pb_grpc.FrontendStub(channel) for channel in channels.values()]
        before = await asyncio.to_thread(workers.taken)
        calls = [asyncio.ensure_future(stubs[i % 2].Predict(query(float(i)), timeout=10))
                 for i in range(40)]  # 10 ms each, one at a time: 0.4 s of work
        # Every query in the workers' hands (a query still on its way when the server
        # shuts down is refused by gRPC, not drained): then SIGTERM, with most queued.
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(workers.taken) < before + 40:
            assert time.monotonic() < deadline, "the workers did not take every query"
            await asyncio.sleep(0.005)
        exit_code = await asyncio.to_thread(workers.frontend.stop, 30.0)
        replies = await asyncio.gather(*calls)
    assert exit_code == 0
    assert sorted(tensors.decode(r.output).item() for r in replies) == [
        4.0 * i for i in range(40)]
    assert not any(r.default_used for r in replies)
    for pid in workers.pids().values():  # no worker outlives the drain
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_without_a_shared_store_are_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.frontend", "--port", "0", "--workers", "2",
         "--state", str(tmp_path / "state.json")],
        cwd=REPO_ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--workers=2 needs a shared state store" in result.stderr
    assert "CLIPPER_READY" not in result.stdout


def test_a_second_sigterm_kills_the_workers_at_once(tmp_path: Path) -> None:
    """A worker that cannot drain (stopped: SIGSTOP) would hold the first SIGTERM for
    the whole grace period (10 s); a second SIGTERM kills the workers and ends it."""
    redis = RedisServer(tmp_path / "redis").start()
    mesh = Mesh(tmp_path)
    pids: dict[int, int] = {}
    try:
        mesh.start_selection(state=redis.url)
        frontend = mesh.start_frontend("--workers", "2", "--cache", "none", state=redis.url)
        pids = Workers(mesh, frontend, tmp_path / f"{frontend.name}.log").pids()
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGSTOP)
        frontend.proc.terminate()
        time.sleep(0.5)
        assert frontend.proc.poll() is None  # draining: waits for the stopped worker
        started = time.monotonic()
        frontend.proc.terminate()
        assert frontend.proc.wait(5) != 0
        assert time.monotonic() - started < 3
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        for pid in pids.values():  # nothing left behind if the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mesh.close()
        redis.stop()
