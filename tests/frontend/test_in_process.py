"""The frontend's routing, membership and errors, with the three services in the test's
event loop (tests/helpers/inprocess.py) and a gated model: no process to start, no
timing to guess."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.generated.inference import grpc_service_pb2 as oip
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc
from testkit.mesh import container_metadata
from tests.helpers.inprocess import Gate, InProcessMesh, in_process_mesh

GATED = "tests.helpers.inprocess:GatedSum"


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    Gate.reset()
    async with in_process_mesh(tmp_path, [(GATED, "gated")]) as mesh:
        async with grpc.aio.insecure_channel(mesh.address) as channel:
            app = pb.Application(name="app", input_spec=pb.TensorSpec(dtype="float32",
                                                                      shape=[4]),
                                 slo_ms=5000, linked_models=["gated"])
            await mesh.management(channel).CreateApplication(
                pb.ApplicationRequest(application=app), metadata=mesh.metadata, timeout=5)
        yield mesh
        Gate.opened.set()  # let any batch still waiting end


async def replicas(mesh: InProcessMesh, channel: grpc.aio.Channel) -> list[pb.Replica]:
    reply = await mesh.management(channel).ListReplicas(pb.ListReplicasRequest(),
                                                        metadata=mesh.metadata, timeout=5)
    return list(reply.replicas)


async def test_a_query_waits_on_its_replica_and_is_answered_when_the_model_is(
        mesh: InProcessMesh) -> None:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        query = pb.PredictRequest(application="app",
                                  input=tensors.encode(np.arange(4, dtype=np.float32)))
        call = asyncio.ensure_future(pb_grpc.FrontendStub(channel).Predict(query, timeout=5))
        assert await asyncio.to_thread(Gate.entered.acquire, True, 5)  # in the model now
        (replica,) = await replicas(mesh, channel)
        assert replica.connected and replica.outstanding == 1
        assert not call.done()
        Gate.opened.set()
        reply = await call
        assert tensors.decode(reply.output).item() == 6.0
        assert list(reply.models) == ["gated:1"] and not reply.default_used
        (replica,) = await replicas(mesh, channel)
        assert replica.outstanding == 0


async def test_a_replica_that_leaves_is_dropped_from_the_table(mesh: InProcessMesh) -> None:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        assert len(await replicas(mesh, channel)) == 1
        Gate.opened.set()
        await mesh.containers.pop().running.stop()  # deregisters
        assert await replicas(mesh, channel) == []
        query = pb.PredictRequest(application="app",
                                  input=tensors.encode(np.ones(4, dtype=np.float32)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.FrontendStub(channel).Predict(query, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_errors_keep_their_status(mesh: InProcessMesh) -> None:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        for request, code in (
            (pb.PredictRequest(application="nope",
                               input=tensors.encode(np.ones(4, dtype=np.float32))),
             grpc.StatusCode.NOT_FOUND),
            (pb.PredictRequest(application="app",
                               input=tensors.encode(np.ones(3, dtype=np.float32))),
             grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Predict(request, timeout=5)
            assert caught.value.code() == code


async def test_a_silent_replica_expires_on_the_frontends_clock(mesh: InProcessMesh) -> None:
    """A replica that announced once and then fell silent stays while the frontend's
    clock is short of its TTL (1 s), however long the test really takes, and goes once
    the clock passes it."""
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        await pb_grpc.RegistryStub(channel).Announce(
            pb.AnnounceRequest(model="gated", version="1", address="127.0.0.1:9",
                               replica_id="silent", replica_secret="s" * 32),
            metadata=container_metadata("gated"), timeout=5)
        assert "silent" in {r.replica_id for r in await replicas(mesh, channel)}
        mesh.clock.advance(0.9)
        await asyncio.sleep(1.2)  # past the TTL in real time (expiry runs every 0.25 s)
        assert "silent" in {r.replica_id for r in await replicas(mesh, channel)}
        mesh.clock.advance(0.2)
        for _ in range(100):  # the next expiry round drops it: at most 5 s
            if "silent" not in {r.replica_id for r in await replicas(mesh, channel)}:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the silent replica was not expired past its TTL")


async def test_a_batched_model_infer_is_one_query_per_row(mesh: InProcessMesh) -> None:
    """The Open Inference Protocol core splits [N, 4] into N queries and stacks the
    answers; a malformed parameter is refused before any query."""
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = oip.ModelInferRequest(
        model_name="app", id="batch",
        inputs=[oip.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                        shape=[2, 4])],
        raw_input_contents=[rows.tobytes()])
    Gate.opened.set()
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        reply = await stub.ModelInfer(request, timeout=5)
        assert list(reply.outputs[0].shape) == [2]
        assert np.frombuffer(reply.raw_output_contents[0], np.float64).tolist() == [6.0, 22.0]
        assert reply.parameters["models"].string_param == "gated:1"
        request.parameters["timeout"].string_param = "soon"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "timeout" in (caught.value.details() or "")
