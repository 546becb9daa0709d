"""Deadlines, defaults and bad input over real gRPC between real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh

SLO_MS = 150
DEFAULT = tensors.encode(np.int64(-1))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("query-path"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--max-message-bytes", "65536")
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.start_container("tests.helpers.models:SlowModel", "slow")
        mesh.start_container("tests.helpers.models:FailsOnNegative", "fragile",
                             "1", "--max-batch-size", "1")
        mesh.create_app("sum", ["sum"])
        mesh.create_app("slow", ["slow"], slo_ms=SLO_MS, default=DEFAULT)
        mesh.create_app("slow-no-default", ["slow"], slo_ms=SLO_MS)
        mesh.create_app("slow-long-slo", ["slow"], slo_ms=900, default=DEFAULT)
        mesh.create_app("fragile", ["fragile"], default=DEFAULT)
        mesh.create_app("orphan", ["nobody-serves-this"], slo_ms=SLO_MS)
        mesh.create_app("orphan-default", ["nobody-serves-this"], slo_ms=SLO_MS, default=DEFAULT)
        for name in ("sum", "slow", "fragile"):
            mesh.wait_connected(name, 1)
        yield mesh
    finally:
        mesh.close()



def query(app: str, values: list[float], dtype: str = "float32") -> pb.PredictRequest:
    return pb.PredictRequest(application=app, input=tensors.encode(np.array(values, dtype)))


async def assert_sum_works(stub: pb_grpc.FrontendStub) -> None:
    reply = await stub.Predict(query("sum", [1, 2, 3, 4.5]), timeout=5)
    assert tensors.decode(reply.output).item() == 10.5
    assert list(reply.models) == ["sum:1"] and not reply.default_used


async def test_a_slow_model_yields_the_default_within_the_slo(stub: pb_grpc.FrontendStub) -> None:
    for _ in range(3):
        started = time.monotonic()
        reply = await stub.Predict(query("slow", [1, 2, 3, 4]), timeout=5)
        elapsed_ms = (time.monotonic() - started) * 1000
        assert reply.default_used and tensors.decode(reply.output).item() == -1
        assert "deadline" in reply.default_reason
        assert list(reply.missing_models) == ["slow"]
        assert elapsed_ms < SLO_MS + 100, elapsed_ms
    await assert_sum_works(stub)


async def test_no_default_means_deadline_exceeded(stub: pb_grpc.FrontendStub) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(query("slow-no-default", [1, 2, 3, 4]), timeout=5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no model answered within the deadline" in (err.value.details() or "")
    assert (time.monotonic() - started) * 1000 < SLO_MS + 100


async def test_a_tighter_client_deadline_wins(stub: pb_grpc.FrontendStub) -> None:
    started = time.monotonic()
    # The default comes back before the client's 300 ms, although the SLO allows 900 ms.
    reply = await stub.Predict(query("slow-long-slo", [1, 2, 3, 4]), timeout=0.3)
    assert reply.default_used
    assert (time.monotonic() - started) * 1000 < 300


async def test_no_replica(stub: pb_grpc.FrontendStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(query("orphan", [1, 2, 3, 4]), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no live replica of model 'nobody-serves-this'" in (err.value.details() or "")
    reply = await stub.Predict(query("orphan-default", [1, 2, 3, 4]), timeout=5)
    assert reply.default_used and "no live replica" in reply.default_reason


async def test_a_model_error_fails_only_its_batch(stub: pb_grpc.FrontendStub) -> None:
    bad, good = await asyncio.gather(
        stub.Predict(query("fragile", [-1, 0, 0, 0]), timeout=5),
        stub.Predict(query("fragile", [1, 1, 1, 1]), timeout=5),
    )
    assert bad.default_used and "ValueError: negative input" in bad.default_reason
    assert not good.default_used and tensors.decode(good.output).item() == 4.0


def raw(dtype: str, shape: list[int], data: bytes) -> pb.PredictRequest:
    return pb.PredictRequest(application="sum",
                             input=pb.Tensor(dtype=dtype, shape=shape, raw=data))


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (query("sum", [1, 2, 3, 4], "float64"), grpc.StatusCode.INVALID_ARGUMENT,
         "expected dtype float32, got float64"),
        (query("sum", [1, 2, 3]), grpc.StatusCode.INVALID_ARGUMENT,
         r"expected shape [4], got [3]"),
        (raw("float32", [4], b"\x00" * 15), grpc.StatusCode.INVALID_ARGUMENT,
         "needs 16 bytes, got 15"),
        (raw("float32", [0], b""), grpc.StatusCode.INVALID_ARGUMENT, "empty tensor"),
        (pb.PredictRequest(application="sum"), grpc.StatusCode.INVALID_ARGUMENT,
         "missing input"),
        (raw("nonsense", [4], b"\x00" * 16), grpc.StatusCode.INVALID_ARGUMENT, "unknown dtype"),
        (query("no-such-app", [1, 2, 3, 4]), grpc.StatusCode.NOT_FOUND,
         "unknown application 'no-such-app'"),
        (raw("float32", [4], b"\x00" * 100_000), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ],
    ids=["dtype", "shape", "byte-length", "empty", "missing", "unknown-dtype", "unknown-app",
         "oversized"],
)
async def test_bad_input_gets_a_clear_status(
    stub: pb_grpc.FrontendStub, request_: pb.PredictRequest, code: grpc.StatusCode, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(request_, timeout=5)
    assert err.value.code() == code
    assert needle in (err.value.details() or "")
    await assert_sum_works(stub)


async def test_garbage_bytes_are_rejected(mesh: Mesh, stub: pb_grpc.FrontendStub) -> None:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        call = channel.unary_unary("/clipper.v1.Frontend/Predict")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"\xff\xff\xff\xff not a protobuf", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (err.value.details() or "")
    await assert_sum_works(stub)


async def test_stream_errors_are_per_query(stub: pb_grpc.FrontendStub) -> None:
    async def requests() -> AsyncIterator[pb.PredictRequest]:
        yield query("sum", [1, 1, 1, 1])
        yield query("sum", [1, 1])
        yield query("no-such-app", [1, 1, 1, 1])
        yield query("sum", [2, 2, 2, 2])

    replies = {r.index: r async for r in stub.PredictStream(requests(), timeout=10)}
    assert tensors.decode(replies[0].response.output).item() == 4.0
    assert replies[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert tensors.decode(replies[3].response.output).item() == 8.0
