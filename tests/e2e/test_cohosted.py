"""Several models served by one container process, over real processes: each is its own
replica at the process's one address, the frontend reaches them all over one stream
(queries name their replica), and an ensemble of them is answered by both."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.auth import bearer
from services.common.credentials import container_token, replica_credential
from services.common.metrics import sample, scrape
from services.common.processes import ServiceProcess, free_port
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import MESH_SECRET, Mesh

METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("cohosted"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--cache", "none")
        tokens = ",".join(container_token(MESH_SECRET, name) for name in ("sum", "twice"))
        mesh.start_container(
            "tests.helpers.models:SumModel", "sum", "1", "--replica-id", "sum-r",
            "--metrics-port", str(METRICS_PORT),
            "--and", "--model", "tests.helpers.models:Twice", "--name", "twice",
            "--frontend", mesh.address, "--heartbeat-s", "0.2", "--replica-id", "twice-r",
            env={"CLIPPER_CONTAINER_TOKEN": tokens})
        mesh.create_app("sum", ["sum"])
        mesh.create_app("twice", ["twice"])
        mesh.create_app("both", ["sum", "twice"], slo_ms=3000, policy="all")
        mesh.wait_connected("sum", 1)
        mesh.wait_connected("twice", 1)
        yield mesh
    finally:
        mesh.close()


def container(mesh: Mesh) -> ServiceProcess:
    return next(p for p in mesh.procs if p.name.startswith("sum-"))


def query(app: str, values: list[float]) -> pb.PredictRequest:
    return pb.PredictRequest(application=app, input=tensors.encode(np.array(values, "float32")))


def test_each_model_is_a_replica_at_the_one_address(mesh: Mesh) -> None:
    sums, twices = mesh.replicas("sum"), mesh.replicas("twice")
    assert [r.replica_id for r in sums] == ["sum-r"]
    assert [r.replica_id for r in twices] == ["twice-r"]
    assert sums[0].address == twices[0].address == container(mesh).address


async def test_each_query_reaches_its_own_model(stub: pb_grpc.FrontendStub) -> None:
    values = [[float(i), 1, 2, 3] for i in range(20)]
    sums = await asyncio.gather(*(stub.Predict(query("sum", v), timeout=10) for v in values))
    twices = await asyncio.gather(*(stub.Predict(query("twice", v), timeout=10)
                                    for v in values))
    for v, s, t in zip(values, sums, twices, strict=True):
        assert tensors.decode(s.output).item() == sum(v)
        np.testing.assert_array_equal(tensors.decode(t.output), v + v)


async def test_an_ensemble_of_them_is_answered_by_both_over_one_stream(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    replies = await asyncio.gather(*(stub.Predict(query("both", [i, 0, 0, 0]), timeout=10)
                                     for i in range(20)))
    for reply in replies:
        assert not reply.default_used, reply.default_reason
        assert sorted(reply.models) == ["sum:1", "twice:1"]
    assert sample(scrape(METRICS_PORT), "clipper_container_streams") == 1  # the frontend's


async def test_a_stream_takes_any_replica_credential_and_queries_name_their_replica(
    mesh: Mesh,
) -> None:
    credential = replica_credential(container_token(MESH_SECRET, "sum"), "sum-r")
    value = tensors.encode(np.array([1, 2, 3, 4], np.float32))
    request = pb.ContainerRequest(queries=[
        pb.ContainerQuery(id=1, input=value, budget_us=2_000_000, replica_id="twice-r"),
        pb.ContainerQuery(id=2, input=value, budget_us=2_000_000, replica_id="nobody"),
        pb.ContainerQuery(id=3, input=value, budget_us=2_000_000),
    ])
    async with grpc.aio.insecure_channel(container(mesh).address) as channel:
        call = pb_grpc.ModelContainerStub(channel).Predict(metadata=bearer(credential))
        await call.write(request)
        replies: dict[int, pb.ContainerReply] = {}
        async with asyncio.timeout(10):
            async for response in call:
                assert set(response.loads) == {"sum-r", "twice-r"}
                replies.update((r.id, r) for r in response.replies)
                if len(replies) == 3:
                    break
        call.cancel()
    np.testing.assert_array_equal(tensors.decode(replies[1].output), [1, 2, 3, 4] * 2)
    assert replies[2].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "replica 'nobody' is not served here" in replies[2].error.message
    # Naming none (as frontends before co-hosting): the replica whose credential opened it.
    assert tensors.decode(replies[3].output).item() == 10
