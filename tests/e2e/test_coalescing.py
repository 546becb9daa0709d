"""Coalescing over real processes: while a replica's queries come faster than the
frontend's --coalesce-ms and several are in flight, they share stream messages (and so
the container's batches); a query that comes alone goes out at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from services.common import tensors
from services.common.metrics import sample, scrape
from services.common.processes import free_port
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh

COALESCE_MS = 200
CONTAINER_METRICS = free_port()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("coalescing"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--coalesce-ms", str(COALESCE_MS), "--cache", "none")
        mesh.start_container("tests.helpers.models:SumModel", "sum", "1",
                             "--metrics-port", str(CONTAINER_METRICS))
        mesh.create_app("sum", ["sum"], slo_ms=3000)
        mesh.wait_connected("sum", 1)
        yield mesh
    finally:
        mesh.close()


def batches() -> tuple[float, float]:
    """(queries, batches) the container has run so far."""
    samples = scrape(CONTAINER_METRICS)
    return sample(samples, "clipper_batch_size_sum"), sample(samples, "clipper_batch_size_count")


async def ask(stub: pb_grpc.FrontendStub, i: int) -> float:
    value = tensors.encode(np.array([i, 1, 2, 3], dtype=np.float32))
    reply = await stub.Predict(pb.PredictRequest(application="sum", input=value), timeout=10)
    assert not reply.default_used, reply.default_reason
    return float(tensors.decode(reply.output).item())


async def test_queries_that_come_fast_share_messages_and_batches(
    stub: pb_grpc.FrontendStub,
) -> None:
    queries_before, batches_before = batches()
    calls = []
    for i in range(0, 80, 2):  # open loop, two queries every 5 ms: 80 within a hold
        calls += [asyncio.create_task(ask(stub, i)), asyncio.create_task(ask(stub, i + 1))]
        await asyncio.sleep(0.005)
    assert await asyncio.gather(*calls) == [i + 6 for i in range(80)]
    queries, ran = batches()
    assert queries - queries_before == 80
    # Sent one by one, these would be about 80 batches of 1.
    assert ran - batches_before <= 20, (queries - queries_before, ran - batches_before)


async def test_a_query_that_comes_alone_is_sent_at_once(stub: pb_grpc.FrontendStub) -> None:
    await asyncio.gather(*(ask(stub, i) for i in range(20)))  # the stream was busy...
    await asyncio.sleep(1.0)  # ...and is quiet now
    started = time.monotonic()
    assert await ask(stub, 7) == 13
    assert time.monotonic() - started < COALESCE_MS / 1000 * 0.75
