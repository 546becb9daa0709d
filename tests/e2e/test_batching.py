"""Batching over real processes: a burst against a small queue, and worker processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import MGMT, Mesh

MAX_QUEUE = 8


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("batching"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container("tests.helpers.models:TenMsPerBatch", "ten", "1",
                             "--max-queue", str(MAX_QUEUE), "--max-batch-size", "4")
        mesh.start_container("tests.helpers.models:SumModel", "in-process", "1",
                             "--worker", "process", "--concurrency", "2")
        mesh.create_app("ten", ["ten"], slo_ms=2000, default=tensors.encode(np.float64(-1)))
        mesh.create_app("in-process", ["in-process"], slo_ms=2000)
        mesh.wait_connected("ten", 1)
        mesh.wait_connected("in-process", 1)
        yield mesh
    finally:
        mesh.close()



async def test_a_burst_is_shed_promptly_and_the_queue_stays_bounded(
    channel: grpc.aio.Channel,
) -> None:
    stub = pb_grpc.FrontendStub(channel)
    mgmt = pb_grpc.ManagementStub(channel)
    depths: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            reply = await mgmt.ListReplicas(pb.ListReplicasRequest(model="ten"), metadata=MGMT,
                                            timeout=5)
            depths.extend(r.queue_depth for r in reply.replicas)
            await asyncio.sleep(0.005)

    async def one(i: int) -> tuple[pb.PredictResponse, float]:
        started = time.monotonic()
        value = tensors.encode(np.array([i, 0, 0, 0], dtype=np.float32))
        reply = await stub.Predict(pb.PredictRequest(application="ten", input=value), timeout=5)
        return reply, time.monotonic() - started

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(one(i) for i in range(200)))
    finally:
        done.set()
        await watcher
    real = [(r, s) for r, s in results if not r.default_used]
    shed = [(r, s) for r, s in results if r.default_used]
    assert real and shed, (len(real), len(shed))
    for i, (reply, _) in enumerate(results):
        if not reply.default_used:
            assert tensors.decode(reply.output).item() == i  # answers reach their callers
    # Shed by the container (its queue or estimated wait) or by the frontend's admission.
    assert all(any(why in r.default_reason for why in ("queue full", "estimated wait",
                                                        "overloaded"))
               for r, _ in shed)
    assert max(s for _, s in shed) < 1.0  # shed at once, not after the 2 s SLO
    assert depths and max(depths) <= MAX_QUEUE


async def test_a_model_in_worker_processes_answers_every_caller(
    channel: grpc.aio.Channel,
) -> None:
    stub = pb_grpc.FrontendStub(channel)

    async def one(i: int) -> float:
        value = tensors.encode(np.array([i, 1, 1, 1], dtype=np.float32))
        reply = await stub.Predict(pb.PredictRequest(application="in-process", input=value),
                                   timeout=10)
        assert not reply.default_used, reply.default_reason
        return float(tensors.decode(reply.output).item())

    assert await asyncio.gather(*(one(i) for i in range(100))) == [i + 3 for i in range(100)]
