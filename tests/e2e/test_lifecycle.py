"""SIGTERM under load: readiness drops, in-flight work is answered, the process exits 0."""

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


@pytest.fixture
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("lifecycle"))
    try:
        mesh.start_selection()
        # A long TTL: a replica that leaves at once has deregistered itself.
        mesh.start_frontend("--replica-ttl-s", "30")
        yield mesh
    finally:
        mesh.close()


def query(value: float) -> pb.PredictRequest:
    return pb.PredictRequest(application="work",
                             input=tensors.encode(np.full(4, value, np.float32)))


async def test_a_container_stopped_under_load_answers_everything(mesh: Mesh) -> None:
    for _ in range(2):
        mesh.start_container("tests.helpers.models:TenMsPerBatch", "work", "1",
                             "--max-batch-size", "4")
    mesh.create_app("work", ["work"], slo_ms=2000)
    mesh.wait_connected("work", 2)
    victim = next(p for p in mesh.procs if p.name.startswith("work"))
    answers: list[pb.PredictResponse] = []
    halfway = asyncio.Event()

    async def worker(stub: pb_grpc.FrontendStub, first: int) -> None:
        for i in range(first, first + 40):
            answers.append(await stub.Predict(query(float(i)), timeout=10))
            if len(answers) >= 160:
                halfway.set()

    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        workers = asyncio.gather(*(worker(stub, 1000 * w) for w in range(8)))
        await asyncio.wait_for(halfway.wait(), 30)
        exit_code = await asyncio.to_thread(victim.stop)  # SIGTERM, mid-load
        await asyncio.wait_for(workers, 60)  # any failed query raises here
    assert exit_code == 0
    assert len(answers) == 320
    assert not [r for r in answers if r.default_used]
    assert sorted(tensors.decode(r.output).item() for r in answers) == sorted(
        4.0 * i for w in range(8) for i in range(1000 * w, 1000 * w + 40))
    assert all(list(r.models) == ["work:1"] for r in answers)
    # It deregistered itself: gone at once, not after a TTL.
    live = {r.address for r in mesh.replicas("work")}
    assert victim.address not in live and len(live) == 1


async def test_a_frontend_stopped_under_load_answers_what_it_accepted(mesh: Mesh) -> None:
    mesh.start_container("tests.helpers.models:TenMsPerBatch", "work", "1",
                         "--max-batch-size", "1")
    mesh.create_app("work", ["work"], slo_ms=3000)
    mesh.wait_connected("work", 1)
    assert mesh.frontend is not None
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        await stub.Predict(query(0.0), timeout=5)  # connected
        calls = [asyncio.ensure_future(stub.Predict(query(float(i)), timeout=10))
                 for i in range(1, 31)]  # 30 queries, one at a time: about 0.3 s of work
        # The first answer is back: the frontend has taken the queries sent before it.
        await asyncio.wait(calls, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        exit_code = await asyncio.to_thread(mesh.frontend.stop)
        replies = await asyncio.gather(*calls)
    assert exit_code == 0
    assert sorted(tensors.decode(r.output).item() for r in replies) == [
        4.0 * i for i in range(1, 31)]
    assert not any(r.default_used for r in replies)
