"""Replicas dying under load, and the selection service going away and coming back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("replicas"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.start_container("tests.helpers.models:VersionOne", "one")
        mesh.create_app("sum", ["sum"], slo_ms=1000, default=tensors.encode(np.float64(-1)))
        mesh.create_app("pair", ["sum", "one"], slo_ms=1000, policy="all")
        mesh.wait_connected("sum", 2)
        mesh.wait_connected("one", 1)
        yield mesh
    finally:
        mesh.close()



async def test_killing_one_of_two_replicas_loses_no_query(
    mesh: Mesh, stub: pb_grpc.FrontendStub
) -> None:
    total, concurrency = 600, 8
    answered: list[pb.PredictResponse] = []
    halfway = asyncio.Event()

    async def worker(start: int) -> None:
        for i in range(start, total, concurrency):
            value = np.array([i, 1, 1, 1], dtype=np.float32)
            reply = await stub.Predict(
                pb.PredictRequest(application="sum", input=tensors.encode(value)), timeout=5
            )
            answered.append(reply)
            if not reply.default_used:
                assert tensors.decode(reply.output).item() == i + 3  # its own answer
            if len(answered) >= total // 3:
                halfway.set()

    workers = asyncio.gather(*(worker(s) for s in range(concurrency)))
    await asyncio.wait_for(halfway.wait(), 30)
    victim = next(p for p in mesh.procs if p.name.startswith("sum"))
    victim.kill()
    await asyncio.wait_for(workers, 60)
    assert len(answered) == total
    defaults = sum(r.default_used for r in answered)
    assert defaults <= total * 0.02, f"{defaults} defaults of {total}"
    await asyncio.to_thread(mesh.wait_connected, "sum", 1)  # the dead one left the registry
    assert victim.address not in {r.address for r in mesh.replicas("sum")}
    served = {
        tuple((await stub.Predict(pb.PredictRequest(
            application="sum", input=tensors.encode(np.ones(4, np.float32))), timeout=5)).models)
        for _ in range(20)
    }
    assert served == {("sum:1",)}


async def test_serving_goes_on_without_the_selection_service(
    mesh: Mesh, stub: pb_grpc.FrontendStub
) -> None:
    query = pb.PredictRequest(application="pair", input=tensors.encode(np.ones(4, np.float32)))
    before = await stub.Predict(query, timeout=5)
    feedback = pb.FeedbackRequest(application="pair", query_id=before.query_id,
                                  label=tensors.encode(np.int64(1)))
    assert list((await stub.Feedback(feedback, timeout=5)).models) == ["one", "sum"]

    assert mesh.selection is not None
    port = mesh.selection.port
    mesh.selection.kill()
    for _ in range(20):
        reply = await stub.Predict(query, timeout=5)
        assert not reply.default_used
        assert sorted(reply.models) == ["one:1", "sum:1"]

    # Back on the same address with the same state file: nothing learnt is lost.
    state_path = mesh.workdir / "selection.json"
    mesh.start_selection(port)
    again = await stub.Predict(query, timeout=5)
    feedback.query_id = again.query_id
    for _ in range(100):  # the frontend reconnects with backoff
        try:
            await stub.Feedback(feedback, timeout=5)
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.05)
    state = json.loads(state_path.read_text())["policy-state/pair/"]
    assert state == {"models": {"one": {"n": 2, "reward": 2}, "sum": {"n": 2, "reward": 0}},
                     "rounds": 2}
