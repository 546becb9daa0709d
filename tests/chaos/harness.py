"""Faults under load, with real processes: the mesh a production user runs (Redis, a
selection service, two frontends, two replicas of a model), open-loop queries through
both frontends, and one fault at a time: kill -9 of a replica, of the selection
service or of a frontend, a replica stopped (SIGSTOP) and resumed, Redis restarted
with and without its data.

The harness plays the process manager (Kubernetes, or the local supervisor): a killed
process is started again on its port. Each fault is reported as what the clients saw
while it lasted (sent, answered, defaults, errors by code, late, lost) and how long
the mesh took to be back to full capacity.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from services.common import tensors
from services.common.processes import ServiceProcess
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import MGMT, Mesh
from tests.helpers.redis_server import RedisServer

logger = logging.getLogger(__name__)

FAULTS = ("kill -9 replica", "SIGSTOP replica", "kill -9 selection", "kill -9 frontend",
          "redis restart", "redis wiped")

APP, MODEL = "chaos", "sum"
DEFAULT = tensors.encode(np.float64(-1))
# What a client of several frontends does: spread calls over them, and retry a call
# that found its frontend gone (UNAVAILABLE) on another, within the call's deadline.
CLIENT_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "clipper.v1.Frontend"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})


@dataclass
class Outcome:
    sent_at: float
    kind: str = ""  # "answer", "default" or the error's status code name; "" while pending
    latency_s: float = 0.0


@dataclass
class FaultReport:
    fault: str
    sent: int = 0
    answered: int = 0
    defaults: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    late: int = 0  # answered or defaulted later than the SLO + 10 ms
    lost: int = 0  # sent, never answered
    recover_s: float = 0.0

    def line(self) -> str:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items())) or "none"
        return (f"{self.fault:<18} sent {self.sent:>5}  answered {self.answered:>5}  "
                f"defaults {self.defaults:>4}  errors {errors}  late {self.late}  "
                f"lost {self.lost}  recovered in "
                + (f"{self.recover_s:.1f} s" if self.recover_s < math.inf else "NEVER"))


class ChaosMesh:
    """Redis, one selection service, two frontends and `replicas` replicas of MODEL."""

    def __init__(self, workdir: Path, slo_ms: int = 100, replicas: int = 2) -> None:
        self.slo_ms = slo_ms
        self.redis = RedisServer(workdir / "redis")
        self.mesh = Mesh(workdir)
        self.frontends: list[ServiceProcess] = []
        self.containers: list[ServiceProcess] = []
        self.replica_count = replicas

    def start(self) -> None:
        self.redis.start()
        self.start_selection(0)
        self.frontends = [self.start_frontend(0) for _ in range(2)]
        self.containers = [self.start_container() for _ in range(self.replica_count)]
        self.mesh.create_app(APP, [MODEL], slo_ms=self.slo_ms, policy="exp3", default=DEFAULT)

    def start_selection(self, port: int) -> ServiceProcess:
        return self.mesh.start_selection(port, state=self.redis.url)

    def start_frontend(self, port: int) -> ServiceProcess:
        return self.mesh.start_frontend("--port", str(port), "--cache", "none",
                                        state=self.redis.url)

    def start_container(self) -> ServiceProcess:
        """A replica announcing to both frontends."""
        return self.mesh.start_container(
            "tests.helpers.models:SumModel", MODEL, "1",
            "--frontend", ",".join(f.address for f in self.frontends))

    @property
    def target(self) -> str:
        """One gRPC target naming both frontends."""
        return "ipv4:" + ",".join(f.address for f in self.frontends)

    def close(self) -> None:
        for proc in self.mesh.procs:
            proc.proc.send_signal(signal.SIGCONT)  # a stopped one can then stop
        self.mesh.close()
        self.redis.stop()

    # ------------------------------------------------------------ health

    def full_capacity(self) -> bool:
        """Every frontend sees every replica connected and answers a query with a model."""
        query = pb.PredictRequest(application=APP, input=tensors.encode(np.zeros(4, "float32")))
        for frontend in self.frontends:
            try:
                with grpc.insecure_channel(frontend.address) as channel:
                    live = pb_grpc.ManagementStub(channel).ListReplicas(
                        pb.ListReplicasRequest(model=MODEL), metadata=MGMT, timeout=1)
                    if sum(r.connected for r in live.replicas) != self.replica_count:
                        return False
                    if pb_grpc.FrontendStub(channel).Predict(query, timeout=1).default_used:
                        return False
            except grpc.RpcError:
                return False
        return True

    async def wait_full_capacity(self, timeout_s: float = 30.0) -> float:
        """Seconds until `full_capacity` (raises TimeoutError past `timeout_s`)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if await asyncio.to_thread(self.full_capacity):
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the mesh was not back to full capacity within {timeout_s} s")

    # ------------------------------------------------------------ faults

    async def kill_replica(self) -> None:
        victim = self.containers.pop(0)
        victim.kill()
        self.containers.append(await asyncio.to_thread(self.start_container))

    async def stop_replica(self, stopped_s: float = 3.0) -> None:
        victim = self.containers[0]
        os.kill(victim.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(stopped_s)
        os.kill(victim.proc.pid, signal.SIGCONT)

    async def kill_selection(self) -> None:
        await asyncio.to_thread(self.mesh.restart_selection)

    async def kill_frontend(self) -> None:
        victim = self.frontends[1]
        victim.kill()
        self.frontends[1] = await asyncio.to_thread(self.start_frontend, victim.port)

    async def restart_redis(self) -> None:
        await asyncio.to_thread(self.redis.stop)
        await asyncio.to_thread(self.redis.start)

    async def wipe_redis(self) -> None:
        """Redis restarted without its data (a pod without its volume)."""
        await asyncio.to_thread(self.redis.stop)
        self.redis.wipe()
        await asyncio.to_thread(self.redis.start)

    async def inject(self, fault: str) -> None:
        """Inject one of FAULTS (the harness starts again what it killed)."""
        await {
            "kill -9 replica": self.kill_replica,
            "SIGSTOP replica": self.stop_replica,
            "kill -9 selection": self.kill_selection,
            "kill -9 frontend": self.kill_frontend,
            "redis restart": self.restart_redis,
            "redis wiped": self.wipe_redis,
        }[fault]()


class Load:
    """Open-loop queries at `rate` per second, each input distinct, through `target`."""

    def __init__(self, target: str, rate: float, slo_ms: int) -> None:
        self.target = target
        self.rate = rate
        self.slo_s = slo_ms / 1000
        self.outcomes: list[Outcome] = []
        self._calls: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.service_config", CLIENT_SERVICE_CONFIG),
                                  ("grpc.enable_retries", 1)])
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._channel is not None
        stub = pb_grpc.FrontendStub(self._channel)
        started = time.monotonic()
        for i in itertools.count():
            await asyncio.sleep(max(started + i / self.rate - time.monotonic(), 0))
            task = asyncio.create_task(self._call(stub, i))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, stub: pb_grpc.FrontendStub, i: int) -> None:
        outcome = Outcome(time.monotonic())
        self.outcomes.append(outcome)
        x = np.array([i, i % 7, i % 13, 0.5], dtype=np.float32)  # distinct: no cache hit
        try:
            reply = await stub.Predict(pb.PredictRequest(application=APP,
                                                         input=tensors.encode(x)),
                                       timeout=self.slo_s + 1.0)
            outcome.kind = "default" if reply.default_used else "answer"
        except grpc.aio.AioRpcError as exc:
            outcome.kind = exc.code().name
        outcome.latency_s = time.monotonic() - outcome.sent_at

    async def stop(self, grace_s: float) -> None:
        """Stop sending; wait up to `grace_s` for the calls in flight (any left are lost)."""
        assert self._task is not None and self._channel is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=grace_s)
        for call in set(self._calls):
            call.cancel()
        await self._channel.close()

    def report(self, fault: str, since: float, until: float) -> FaultReport:
        report = FaultReport(fault)
        for outcome in self.outcomes:
            if not since <= outcome.sent_at < until:
                continue
            report.sent += 1
            if outcome.kind == "answer":
                report.answered += 1
            elif outcome.kind == "default":
                report.defaults += 1
            elif outcome.kind:
                report.errors[outcome.kind] += 1
            else:
                report.lost += 1
            if outcome.kind in ("answer", "default") and outcome.latency_s > self.slo_s + 0.010:
                report.late += 1
        return report


class Ledger:
    """Management changes made while faults happen, and whether each was acknowledged."""

    def __init__(self) -> None:
        self.acknowledged: list[str] = []
        self.refused = 0
        self._count = itertools.count()

    def change(self, address: str) -> None:
        """Create an application through `address` (kept if acknowledged)."""
        name = f"ledger-{next(self._count)}"
        app = pb.Application(name=name, input_spec=pb.TensorSpec(dtype="float32", shape=[4]),
                             slo_ms=100, linked_models=[MODEL])
        try:
            with grpc.insecure_channel(address) as channel:
                pb_grpc.ManagementStub(channel).CreateApplication(
                    pb.ApplicationRequest(application=app), metadata=MGMT, timeout=2)
            self.acknowledged.append(name)
        except grpc.RpcError:
            self.refused += 1

    def missing(self, addresses: list[str]) -> list[str]:
        """Acknowledged changes some frontend no longer knows."""
        lost = []
        for address in addresses:
            with grpc.insecure_channel(address) as channel:
                reply = pb_grpc.ManagementStub(channel).ListApplications(
                    pb.ListApplicationsRequest(), metadata=MGMT, timeout=5)
            known = {a.name for a in reply.applications}
            lost += [f"{name} on {address}" for name in self.acknowledged if name not in known]
        return lost


@dataclass(frozen=True)
class Window:
    fault: str
    since: float
    until: float
    recover_s: float


async def run_fault(mesh: ChaosMesh, ledger: Ledger, name: str, settle_s: float = 1.0,
                    ) -> Window:
    """Inject `name` under the running load, make a management change while it lasts,
    wait for full capacity and `settle_s` more."""
    since = time.monotonic()
    await mesh.inject(name)
    await asyncio.to_thread(ledger.change, mesh.frontends[0].address)
    try:
        await mesh.wait_full_capacity()
        recover_s = time.monotonic() - since
    except TimeoutError:
        recover_s = math.inf  # reported as never; the next fault still runs
    await asyncio.sleep(settle_s)
    return Window(name, since, time.monotonic(), recover_s)


@dataclass
class SoakResult:
    reports: list[FaultReport]
    ledger: Ledger
    missing_changes: list[str]

    @property
    def lost(self) -> int:
        return sum(r.lost for r in self.reports)

    @property
    def unrecovered(self) -> list[str]:
        return [r.fault for r in self.reports if r.recover_s == math.inf]

    def text(self) -> str:
        lines = [r.line() for r in self.reports]
        lines.append(f"management changes acknowledged {len(self.ledger.acknowledged)}, "
                     f"refused {self.ledger.refused}, lost {len(self.missing_changes)}"
                     + (f": {', '.join(self.missing_changes)}" if self.missing_changes else ""))
        return "\n".join(lines)


async def soak(workdir: Path, faults: list[str], rate: float = 40, slo_ms: int = 100,
               steady_s: float = 2.0) -> SoakResult:
    """Start the mesh, load it, run `faults` one after the other (each to full capacity),
    then stop the load and report each fault's window, a steady window first."""
    mesh = ChaosMesh(workdir, slo_ms)
    ledger = Ledger()
    try:
        await asyncio.to_thread(mesh.start)
        await mesh.wait_full_capacity()
        load = Load(mesh.target, rate, slo_ms)
        await load.start()
        since = time.monotonic()
        await asyncio.sleep(steady_s)
        windows = [Window("steady", since, time.monotonic(), 0.0)]
        try:
            for name in faults:
                windows.append(await run_fault(mesh, ledger, name))
                logger.info("%s: back to full capacity in %.1f s", name, windows[-1].recover_s)
        finally:
            await load.stop(grace_s=slo_ms / 1000 + 2.0)
        frontends = [f.address for f in mesh.frontends]
        missing = await asyncio.to_thread(ledger.missing, frontends)
    finally:
        await asyncio.to_thread(mesh.close)
    reports = []
    for w in windows:
        report = load.report(w.fault, w.since, w.until)
        report.recover_s = w.recover_s
        reports.append(report)
    return SoakResult(reports, ledger, missing)
