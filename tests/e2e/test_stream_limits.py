"""Stream messages fit what the receiving side accepts, between real processes.

The container receives and sends messages of at most 256 KiB (`--max-message-bytes`)
and states it when the frontend opens its stream. Many queries of 16 KiB are in
flight at once (a few MiB that the frontend would otherwise pack into one message),
with answers twice their size; a query too large for any message, and one whose
answer is, fail alone with INVALID_ARGUMENT naming the limit, and the stream stays up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh

LIMIT = 256 * 1024
SMALL, MEDIUM, LARGE = 4096, 50_000, 80_000  # float32 elements: 16 KiB, 195 KiB, 312 KiB


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("stream-limits"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container("tests.helpers.models:Twice", "twice", "1",
                             "--max-message-bytes", str(LIMIT))
        for name, size in (("small", SMALL), ("medium", MEDIUM), ("large", LARGE)):
            mesh.create_app(name, ["twice"], shape=(size,), slo_ms=20_000)
        mesh.wait_connected("twice", 1)
        yield mesh
    finally:
        mesh.close()


def query(app: str, size: int, value: float) -> pb.PredictRequest:
    return pb.PredictRequest(application=app,
                             input=tensors.encode(np.full(size, value, np.float32)))


async def test_batches_are_split_to_fit_and_an_oversized_query_fails_alone(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    count = 200  # 3.2 MiB of queries, 6.4 MiB of answers, all in flight at once

    async def ask(request: pb.PredictRequest) -> pb.PredictResponse | grpc.aio.AioRpcError:
        try:
            return await stub.Predict(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc

    small = [asyncio.create_task(ask(query("small", SMALL, i))) for i in range(count // 2)]
    too_large = asyncio.create_task(ask(query("large", LARGE, 1)))
    answer_too_large = asyncio.create_task(ask(query("medium", MEDIUM, 2)))
    small += [asyncio.create_task(ask(query("small", SMALL, i)))
              for i in range(count // 2, count)]
    replies = await asyncio.wait_for(asyncio.gather(*small), 60)

    for i, reply in enumerate(replies):  # every one answered, with its own answer
        assert isinstance(reply, pb.PredictResponse), reply
        assert not reply.default_used
        np.testing.assert_array_equal(tensors.decode(reply.output),
                                      np.full(2 * SMALL, i, np.float32))
    error = await too_large
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{LIMIT}-byte" in (error.details() or ""), error.details()
    assert "--max-message-bytes" in (error.details() or "")
    error = await answer_too_large
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "answer" in (error.details() or "") and str(LIMIT) in (error.details() or "")

    # The stream never broke: the replica stayed connected, and still answers.
    logs = "".join(p.read_text() for p in mesh.workdir.glob("*.log"))
    assert "broke" not in logs and "RESOURCE_EXHAUSTED" not in logs
    assert all(r.connected for r in mesh.replicas("twice"))
    reply = await stub.Predict(query("small", SMALL, 7), timeout=10)
    assert tensors.decode(reply.output)[0] == 7
