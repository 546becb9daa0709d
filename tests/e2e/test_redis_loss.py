"""Redis restarted with and without its data under two frontends, a selection service and
containers: nothing acknowledged is lost, queries keep being answered, and a model's
active version stays the one `set-version` chose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.redis_store import RedisStore
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.selection.decider import state_key
from testkit.mesh import MGMT, Mesh
from tests.helpers.redis_server import RedisServer

SUM = "tests.helpers.models:SumModel"
FEEDBACK_ROUNDS = 10


@dataclass
class LossMesh:
    mesh: Mesh
    redis: RedisServer
    a: str
    b: str
    feedback_rounds: int = 0  # feedback sent to the application "learn" so far
    names: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def loss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LossMesh]:
    """Frontends a and b on one Redis (the selection service's state too); model `sum` in
    versions 1 (announcing to a) and 2 (announcing to b), version 2 made active."""
    workdir = tmp_path_factory.mktemp("redis-loss")
    redis = RedisServer(workdir / "redis").start()
    mesh = Mesh(workdir)
    try:
        mesh.start_selection(state=redis.url)
        a = mesh.start_frontend(state=redis.url).address
        b = mesh.start_frontend(state=redis.url).address
        mesh.start_container(SUM, "sum", "1")
        mesh.start_container(SUM, "sum", "2", "--frontend", b)
        mesh.create_app("sum", ["sum"], via=a)
        mesh.create_app("learn", ["sum"], policy="exp4", via=b)
        for via in (a, b):
            mesh.wait_connected("sum", 2, via=via)
        with mesh.management(b) as mgmt:
            mgmt.SetModelVersion(pb.SetModelVersionRequest(model="sum", version="2"),
                                 metadata=MGMT, timeout=5)
        yield LossMesh(mesh, redis, a, b)
    finally:
        mesh.close()
        redis.stop()


def query(app: str, value: float) -> pb.PredictRequest:
    return pb.PredictRequest(application=app,
                             input=tensors.encode(np.full(4, value, np.float32)))


async def active_version(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await pb_grpc.ManagementStub(channel).ListModels(
            pb.ListModelsRequest(), metadata=MGMT, timeout=5)
    return next(m.active_version for m in reply.models if m.name == "sum")


async def application_names(address: str) -> set[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await pb_grpc.ManagementStub(channel).ListApplications(
            pb.ListApplicationsRequest(), metadata=MGMT, timeout=5)
    return {app.name for app in reply.applications}


async def send_feedback(loss: LossMesh, rounds: int) -> None:
    async with grpc.aio.insecure_channel(loss.a) as channel:
        stub = pb_grpc.FrontendStub(channel)
        for i in range(rounds):
            reply = await stub.Predict(query("learn", float(i)), timeout=5)
            await stub.Feedback(pb.FeedbackRequest(
                application="learn", query_id=reply.query_id, label=reply.output), timeout=5)
    loss.feedback_rounds += rounds


class Traffic:
    """Queries through both frontends, and applications created through them in turn,
    until stopped (bounded in count): what was answered and acknowledged."""

    def __init__(self, loss: LossMesh) -> None:
        self.loss = loss
        self.answers: list[pb.PredictResponse] = []
        self.created: list[str] = []  # acknowledged CreateApplication calls
        self.refused: list[grpc.StatusCode] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._query(address, app))
                       for address in (self.loss.a, self.loss.b) for app in ("sum", "learn")]
        self._tasks.append(asyncio.create_task(self._manage()))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)  # a query that failed raises here

    async def _query(self, address: str, app: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.FrontendStub(channel)
            for i in range(1000):  # bounded: about 10 s at most
                if self._stop.is_set():
                    return
                self.answers.append(await stub.Predict(query(app, float(i)), timeout=5))
                await asyncio.sleep(0.01)

    async def _manage(self) -> None:
        channels = [grpc.aio.insecure_channel(address) for address in (self.loss.a, self.loss.b)]
        try:
            for i in range(300):  # bounded: about 15 s at most
                if self._stop.is_set():
                    return
                name = f"made-{len(self.loss.names)}-{i}"
                app = pb.Application(name=name, slo_ms=1000, linked_models=["sum"],
                                     input_spec=pb.TensorSpec(dtype="float32", shape=[4]))
                try:
                    await pb_grpc.ManagementStub(channels[i % 2]).CreateApplication(
                        pb.ApplicationRequest(application=app), metadata=MGMT, timeout=2)
                    self.created.append(name)
                except grpc.aio.AioRpcError as exc:  # Redis away: refused, not acknowledged
                    self.refused.append(exc.code())
                await asyncio.sleep(0.05)
        finally:
            for channel in channels:
                await channel.close()
            self.loss.names.extend(self.created)


async def stored(loss: LossMesh) -> dict[str, object]:
    """What the store holds of what this mesh registered."""
    store = RedisStore(loss.redis.url)
    try:
        model = await store.get("model/sum") or {}
        policy = await store.get(state_key("learn", "")) or {}
        return {
            "apps": {key.removeprefix("app/") for key in await store.scan("app/")},
            "active": model.get("active_version"),
            "versions": sorted(model.get("versions", {})),
            "replicas": len(await store.scan("replica/")),
            "rounds": policy.get("rounds", 0),
            "generation": (await store.get("generation/registry") or {}).get("id"),
        }
    finally:
        await store.aclose()


def missing(loss: LossMesh, now: dict[str, object]) -> list[str]:
    """What the store lacks of what was registered (empty: everything is there)."""
    apps = now["apps"]
    assert isinstance(apps, set)
    lacks = [f"app {name}" for name in sorted({"sum", "learn", *loss.names} - apps)]
    wanted = {"active": "2", "versions": ["1", "2"], "replicas": 2,
              "rounds": loss.feedback_rounds}
    return lacks + [f"{k}={now[k]!r} (want {v!r})" for k, v in wanted.items() if now[k] != v]


async def restart_redis(loss: LossMesh, keep_data: bool) -> float:
    """Stop Redis, start it again (wiped unless `keep_data`); seconds until the store
    holds everything again (fails past 20 s)."""
    await asyncio.to_thread(loss.redis.stop)
    if not keep_data:
        loss.redis.wipe()
    await asyncio.sleep(0.3)  # down for a while: management calls are refused meanwhile
    await asyncio.to_thread(loss.redis.start)
    started = time.monotonic()
    while lacks := missing(loss, await stored(loss)):
        assert time.monotonic() - started < 20, f"store not restored: {lacks[:10]}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def wait_seen_everywhere(loss: LossMesh) -> None:
    """Both frontends list every application acknowledged (within 10 s)."""
    wanted = {"sum", "learn", *loss.names}
    for address in (loss.a, loss.b):
        deadline = time.monotonic() + 10
        while not wanted <= (names := await application_names(address)):
            assert time.monotonic() < deadline, f"{address} misses {wanted - names}"
            await asyncio.sleep(0.1)


async def test_reannouncing_replicas_keep_the_chosen_version(loss: LossMesh) -> None:
    victim = next(p for p in loss.mesh.procs if p.name.startswith("sum-1"))
    victim.kill()
    loss.mesh.start_container(SUM, "sum", "1")  # a new replica of version 1 announces
    for via in (loss.a, loss.b):
        await asyncio.to_thread(loss.mesh.wait_connected, "sum", 2, 20.0, via)
    await asyncio.sleep(1.0)  # five heartbeats of each replica
    for via in (loss.a, loss.b):
        assert await active_version(via) == "2"
        async with grpc.aio.insecure_channel(via) as channel:
            reply = await pb_grpc.FrontendStub(channel).Predict(query("sum", 1.0), timeout=5)
        assert list(reply.models) == ["sum:2"]


@pytest.mark.parametrize("keep_data", [True, False], ids=["with-data", "without-data"])
async def test_a_redis_restart_loses_nothing_acknowledged(loss: LossMesh,
                                                          keep_data: bool) -> None:
    await send_feedback(loss, FEEDBACK_ROUNDS)
    before = await stored(loss)
    assert not missing(loss, before)
    traffic = Traffic(loss)
    traffic.start()
    await asyncio.sleep(0.5)
    restored_s = await restart_redis(loss, keep_data)
    await asyncio.sleep(0.5)  # traffic goes on after the store is back
    await traffic.stop()

    # Every query was answered by a model (an error would have raised in stop()).
    assert len(traffic.answers) > 100
    assert not [r for r in traffic.answers if r.default_used]
    assert {tuple(r.models) for r in traffic.answers} == {("sum:2",)}
    assert set(traffic.refused) <= {grpc.StatusCode.UNAVAILABLE}
    assert traffic.created  # some were acknowledged, before the restart or after it
    after = await stored(loss)
    # With its data, Redis is the store it was; without, it is a new generation,
    # rewritten from the frontends' and the selection service's memory.
    assert (after["generation"] == before["generation"]) == keep_data
    assert restored_s < 20
    await wait_seen_everywhere(loss)
    for via in (loss.a, loss.b):
        assert await active_version(via) == "2"
        await asyncio.to_thread(loss.mesh.wait_connected, "sum", 2, 10.0, via)
    # Learning goes on from the rewritten policy state.
    await send_feedback(loss, 1)
    assert (await stored(loss))["rounds"] == loss.feedback_rounds
    # The change feed is back: an application created through b is served through a.
    await asyncio.to_thread(loss.mesh.create_app, f"after-{keep_data}", ["sum"], via=loss.b)
    loss.names.append(f"after-{keep_data}")
    await wait_seen_everywhere(loss)
