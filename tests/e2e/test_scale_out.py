"""Two frontends on one real redis-server: shared registry, replicas and restarts of Redis."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.redis_store import RedisStore
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh
from tests.helpers.redis_server import RedisServer
from tests.helpers.served import served_within

DEFAULT = tensors.encode(np.int64(-1))


class TwoFrontends:
    def __init__(self, mesh: Mesh, redis: RedisServer, a: str, b: str) -> None:
        self.mesh, self.redis, self.a, self.b = mesh, redis, a, b


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoFrontends]:
    workdir = tmp_path_factory.mktemp("scale-out")
    redis = RedisServer(workdir / "redis").start()
    mesh = Mesh(workdir)
    try:
        mesh.start_selection(state=redis.url)
        # Registry and prediction cache both on the one Redis.
        a = mesh.start_frontend("--cache", redis.url, state=redis.url).address
        b = mesh.start_frontend("--cache", redis.url, state=redis.url).address
        for _ in range(2):  # both announce to frontend a only
            mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.create_app("sum", ["sum"], via=a)
        for via in (a, b):
            mesh.wait_connected("sum", 2, via=via)
        yield TwoFrontends(mesh, redis, a, b)
    finally:
        mesh.close()
        redis.stop()


def query(app: str, value: float = 1.0) -> pb.PredictRequest:
    return pb.PredictRequest(application=app, input=tensors.encode(np.full(4, value, np.float32)))


async def predict(address: str, request: pb.PredictRequest) -> pb.PredictResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        reply: pb.PredictResponse = await pb_grpc.FrontendStub(channel).Predict(request, timeout=5)
        return reply


async def test_either_frontend_serves_what_the_other_registered(scale: TwoFrontends) -> None:
    for address in (scale.a, scale.b):
        reply = await predict(address, query("sum", 2.0))
        assert tensors.decode(reply.output).item() == 8.0 and list(reply.models) == ["sum:1"]
    await asyncio.to_thread(scale.mesh.create_app, "sum-again", ["sum"], via=scale.b)
    ask = functools.partial(predict, scale.a, query("sum-again"))
    assert await served_within(ask, "sum-again", 1.0) < 1.0


async def test_a_killed_replica_leaves_both_frontends(scale: TwoFrontends) -> None:
    victim = next(p for p in scale.mesh.procs if p.name.startswith("sum"))
    victim.kill()
    for via in (scale.a, scale.b):  # TTL 1 s
        await asyncio.to_thread(scale.mesh.wait_connected, "sum", 1, 5.0, via)
        assert victim.address not in {r.address for r in scale.mesh.replicas("sum", via)}
    scale.mesh.start_container("tests.helpers.models:SumModel", "sum")  # back to two
    for via in (scale.a, scale.b):
        await asyncio.to_thread(scale.mesh.wait_connected, "sum", 2, 10.0, via)


async def test_a_redis_restart_loses_no_query_and_no_registration(scale: TwoFrontends) -> None:
    await asyncio.to_thread(scale.mesh.create_app, "guarded", ["sum"], default=DEFAULT,
                            via=scale.a)
    await served_within(functools.partial(predict, scale.b, query("guarded")), "guarded", 1.0)
    answers: list[pb.PredictResponse] = []
    stop = asyncio.Event()

    async def load(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.FrontendStub(channel)
            for i in range(400):  # bounded: about 4 s at most
                if stop.is_set():
                    return
                answers.append(await stub.Predict(query("guarded", float(i)), timeout=5))
                await asyncio.sleep(0.01)

    loaders = [asyncio.create_task(load(address)) for address in (scale.a, scale.b)]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(scale.redis.stop)
    await asyncio.sleep(1.0)  # longer than the replicas' TTL: they stay, heartbeats held
    await asyncio.to_thread(scale.redis.start)
    await asyncio.sleep(0.8)
    stop.set()
    await asyncio.gather(*loaders)  # no query failed (an error would have raised)
    assert len(answers) > 100
    assert not [r for r in answers if r.default_used]

    store = RedisStore(scale.redis.url)
    try:
        assert {"app/sum", "app/sum-again", "app/guarded"} <= set(await store.scan("app/"))
        assert len(await store.scan("replica/")) == 2
    finally:
        await store.aclose()
    for via in (scale.a, scale.b):
        await asyncio.to_thread(scale.mesh.wait_connected, "sum", 2, 5.0, via)
    # The change feed is back: an application registered now reaches the other frontend.
    await asyncio.to_thread(scale.mesh.create_app, "after-restart", ["sum"], via=scale.b)
    ask = functools.partial(predict, scale.a, query("after-restart"))
    assert await served_within(ask, "after-restart", 1.0) < 1.0
