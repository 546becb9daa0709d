"""The relay floor's processes (benchmarks/relay_server.py) over real gRPC: each query is
relayed to every stream-echo process and its input comes back, concurrent queries share
the streams."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.processes import ServiceProcess, start_service
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def relay() -> Iterator[str]:
    started: list[ServiceProcess] = []
    try:
        for i in range(2):
            started.append(start_service("benchmarks.relay_server", ["--stream-echo"],
                                         name=f"stream-echo-{i}"))
        started.append(start_service(
            "benchmarks.relay_server",
            ["--upstream", ",".join(s.address for s in started)], name="relay"))
        yield started[-1].address
    finally:
        for service in started:
            service.stop()


async def test_every_query_gets_its_own_input_back(relay: str) -> None:
    inputs = [np.full((1, 4), i, np.float32) for i in range(50)]
    async with grpc.aio.insecure_channel(relay) as channel:
        stub = pb_grpc.FrontendStub(channel)
        replies = await asyncio.gather(*(
            stub.Predict(pb.PredictRequest(query_id=str(i), input=tensors.encode(x)),
                         timeout=10)
            for i, x in enumerate(inputs)))
    for i, (x, reply) in enumerate(zip(inputs, replies, strict=True)):
        assert reply.query_id == str(i)
        np.testing.assert_array_equal(tensors.decode(reply.output), x)
