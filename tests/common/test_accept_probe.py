"""The accept probe times how long a call waits inside gRPC core before its handler runs."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.accept_probe import AcceptProbe
from services.common.admission import ACCEPT_SHARE, Admission, AdmissionLimits
from services.common.auth import MANAGEMENT, AuthInterceptor, bearer, rules_for, token_auth
from services.common.errors import Overloaded
from services.common.server import start_server
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc


class Hog(pb_grpc.FrontendServicer):
    """Each call holds the event loop for 20 ms, as a saturated loop would."""

    async def Predict(self, request: pb.PredictRequest,
                      context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        time.sleep(0.02)  # noqa: ASYNC251 (holding the loop is the point)
        return pb.PredictResponse()


async def test_calls_queued_behind_a_busy_loop_are_seen_and_new_queries_refused() -> None:
    server = await start_server(
        [(lambda s: pb_grpc.add_FrontendServicer_to_server(Hog(), s), "clipper.v1.Frontend")],
        "127.0.0.1", 0, probe_socket=True)
    admission = Admission(AdmissionLimits())
    probe = admission.attach_probe(server.probe_address)
    assert server.probe_address.startswith("unix:")
    await probe.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest())
            admission.check("a", 1.0)  # in use: the probe runs
            await asyncio.sleep(0.2)
            assert probe.wait_s < 0.05  # idle: answered at once
            stub = pb_grpc.FrontendStub(channel)
            calls = [stub.Predict(pb.PredictRequest(), timeout=10) for _ in range(30)]
            waits = []
            for _ in range(20):  # 30 calls queued behind 20 ms each: 0.6 s of work
                await asyncio.sleep(0.02)
                admission.check("a", 10.0)  # still in use
                waits.append(probe.wait_s)
            assert max(waits) > 0.1
            try:
                admission.check("a", 0.2)
            except Overloaded as exc:
                assert "inside gRPC core" in exc.message
            else:
                assert probe.wait_s <= 0.2 * ACCEPT_SHARE, (
                    "a query with 0.2 s left taken behind the queue")
            await asyncio.gather(*calls)
    finally:
        await probe.aclose()
        await server.stop(None)


async def test_an_idle_service_is_not_probed() -> None:
    server = await start_server([], "127.0.0.1", 0, probe_socket=True)
    probed = []
    probe = AcceptProbe(server.probe_address, lambda: bool(probed.append(1)) and False)
    await probe.start()
    try:
        await asyncio.sleep(0.2)
        assert len(probed) >= 3 and probe.wait_s == 0
    finally:
        await probe.aclose()
        await server.stop(None)
    socket_dir = Path(server.probe_address.removeprefix("unix:")).parent
    assert not socket_dir.exists()  # removed with the server


async def test_the_probe_socket_is_private_and_serves_health_checks_only() -> None:
    token = "a-management-token-long-enough"
    rules = rules_for(pb.DESCRIPTOR.services_by_name["Frontend"],
                      token_auth(token, MANAGEMENT, "management"))
    server = await start_server(
        [(lambda s: pb_grpc.add_FrontendServicer_to_server(Hog(), s), "clipper.v1.Frontend")],
        "127.0.0.1", 0, interceptors=[AuthInterceptor(rules)], probe_socket=True)
    socket_dir = Path(server.probe_address.removeprefix("unix:")).parent
    try:
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        async with grpc.aio.insecure_channel(server.probe_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.FrontendStub(channel).Predict(
                    pb.PredictRequest(), metadata=bearer(token), timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await pb_grpc.FrontendStub(channel).Predict(  # the same call over TCP is served
                pb.PredictRequest(), metadata=bearer(token), timeout=5)
    finally:
        await server.stop(None)
    assert not socket_dir.exists()
