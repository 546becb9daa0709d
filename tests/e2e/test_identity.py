"""Replica identity over real processes: scoped container tokens, replica secrets, the
credential frontends dial replicas with, and the selection service's token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.auth import bearer
from services.common.credentials import container_token, replica_credential
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import MANAGEMENT_TOKEN, MESH_SECRET, MGMT, SELECTION_TOKEN, Mesh

DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("identity"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.create_app("sum", ["sum"])
        mesh.wait_connected("sum", 1)
        yield mesh
    finally:
        mesh.close()


def token_of(model: str) -> tuple[tuple[str, str]]:
    return bearer(container_token(MESH_SECRET, model))


def announce(model: str, replica_id: str, address: str = "127.0.0.1:1",
             secret: str = "a-replica-secret") -> pb.AnnounceRequest:
    return pb.AnnounceRequest(model=model, version="1", address=address,
                              replica_id=replica_id, replica_secret=secret)


async def refused(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code()


async def sum_answers(channel: grpc.aio.Channel) -> float:
    reply = await pb_grpc.FrontendStub(channel).Predict(pb.PredictRequest(
        application="sum", input=tensors.encode(np.arange(4, dtype=np.float32))), timeout=5)
    assert not reply.default_used, reply.default_reason
    return float(tensors.decode(reply.output))


async def test_a_model_token_announces_that_model_only(channel: grpc.aio.Channel) -> None:
    registry = pb_grpc.RegistryStub(channel)
    code = await refused(registry.Announce(announce("beta", "b-1"), metadata=token_of("alpha"),
                                           timeout=5))
    assert code == DENIED
    forged = container_token("another-mesh-secret-123", "beta")
    assert await refused(registry.Announce(announce("beta", "b-2"), metadata=bearer(forged),
                                           timeout=5)) == DENIED
    models = await pb_grpc.ManagementStub(channel).ListModels(pb.ListModelsRequest(),
                                                              metadata=MGMT, timeout=5)
    assert "beta" not in {m.name for m in models.models}


async def test_a_replica_cannot_be_taken_over(mesh: Mesh, channel: grpc.aio.Channel) -> None:
    (real,) = await asyncio.to_thread(mesh.replicas, "sum")
    registry = pb_grpc.RegistryStub(channel)
    rid = real.replica_id
    attempts = [
        # The right model's token, but not the secret the replica announced itself with.
        registry.Announce(announce("sum", rid, "127.0.0.1:2", "guessed"),
                          metadata=token_of("sum"), timeout=5),
        # Another model's token: neither that model's replica, nor moved to the other model.
        registry.Announce(announce("sum", rid, "127.0.0.1:2"), metadata=token_of("alpha"),
                          timeout=5),
        registry.Announce(announce("alpha", rid, "127.0.0.1:2"), metadata=token_of("alpha"),
                          timeout=5),
        registry.Deregister(pb.DeregisterRequest(replica_id=rid, replica_secret="guessed"),
                            metadata=token_of("alpha"), timeout=5),
        registry.Deregister(pb.DeregisterRequest(replica_id=rid, replica_secret="guessed"),
                            metadata=token_of("sum"), timeout=5),
    ]
    for attempt in attempts:
        assert await refused(attempt) == DENIED
    no_token = registry.Deregister(pb.DeregisterRequest(replica_id=rid), timeout=5)
    assert await refused(no_token) == grpc.StatusCode.UNAUTHENTICATED
    (after,) = await asyncio.to_thread(mesh.replicas, "sum")
    assert (after.replica_id, after.model, after.address) == (rid, "sum", real.address)
    assert await sum_answers(channel) == 6.0


async def test_the_owner_may_re_announce_and_deregister(channel: grpc.aio.Channel) -> None:
    registry = pb_grpc.RegistryStub(channel)
    md = token_of("alpha")
    await registry.Announce(announce("alpha", "alpha-1", "127.0.0.1:3", "mine"), metadata=md,
                            timeout=5)
    await registry.Announce(announce("alpha", "alpha-1", "127.0.0.1:4", "mine"), metadata=md,
                            timeout=5)
    replicas = await pb_grpc.ManagementStub(channel).ListReplicas(
        pb.ListReplicasRequest(model="alpha"), metadata=MGMT, timeout=5)
    assert [r.address for r in replicas.replicas] == ["127.0.0.1:4"]
    await registry.Deregister(pb.DeregisterRequest(replica_id="alpha-1", replica_secret="mine"),
                              metadata=md, timeout=5)
    replicas = await pb_grpc.ManagementStub(channel).ListReplicas(
        pb.ListReplicasRequest(model="alpha"), metadata=MGMT, timeout=5)
    assert not replicas.replicas


class _Listener(pb_grpc.ModelContainerServicer):
    """Stands at a registered address and keeps what a frontend sends when it dials."""

    def __init__(self) -> None:
        self.metadata: asyncio.Future[dict[str, str]] = (
            asyncio.get_running_loop().create_future())

    async def Predict(self, request_iterator: AsyncIterator[pb.ContainerRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ContainerResponse]:
        if not self.metadata.done():
            self.metadata.set_result({k: str(v) for k, v in context.invocation_metadata()})
        await context.abort(grpc.StatusCode.UNAVAILABLE, "not a model")
        yield pb.ContainerResponse()  # pragma: no cover


async def test_the_frontend_dials_a_replica_with_a_credential_for_it_alone(
    mesh: Mesh, channel: grpc.aio.Channel,
) -> None:
    listener = _Listener()
    server = grpc.aio.server()
    pb_grpc.add_ModelContainerServicer_to_server(listener, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    registry = pb_grpc.RegistryStub(channel)
    try:
        # Whoever holds alpha's token registers an address: the frontend dials it.
        await registry.Announce(announce("alpha", "alpha-listener", f"127.0.0.1:{port}", "s"),
                                metadata=token_of("alpha"), timeout=5)
        sent = await asyncio.wait_for(listener.metadata, 20)
    finally:
        await registry.Deregister(
            pb.DeregisterRequest(replica_id="alpha-listener", replica_secret="s"),
            metadata=token_of("alpha"), timeout=5)
        await server.stop(None)
    alpha_token = container_token(MESH_SECRET, "alpha")
    credential = sent["authorization"].removeprefix("Bearer ")
    assert credential == replica_credential(alpha_token, "alpha-listener")
    assert MESH_SECRET not in str(sent) and alpha_token not in str(sent)
    # What it learnt opens no other replica: the real container of `sum` refuses it.
    (real,) = await asyncio.to_thread(mesh.replicas, "sum")
    async with grpc.aio.insecure_channel(real.address) as direct:
        stub = pb_grpc.ModelContainerStub(direct)
        for metadata, code in ((bearer(credential), DENIED),
                               ((), grpc.StatusCode.UNAUTHENTICATED)):
            call = stub.Predict(metadata=metadata, timeout=5)
            assert await refused(call.read()) == code
            call.cancel()


async def test_the_selection_service_accepts_frontends_only(mesh: Mesh) -> None:
    assert mesh.selection is not None
    async with grpc.aio.insecure_channel(mesh.selection.address) as channel:
        stub = pb_grpc.SelectionStub(channel)
        for metadata, code in (((), grpc.StatusCode.UNAUTHENTICATED),
                               (bearer("not-the-token"), DENIED),
                               (token_of("sum"), DENIED)):
            call = stub.Decide(metadata=metadata, timeout=5)
            assert await refused(call.read()) == code
            call.cancel()
        call = stub.Decide(metadata=bearer(SELECTION_TOKEN), timeout=5)
        query = pb.SelectQuery(application="a", policy="exp3", candidates=["m"])
        await call.write(pb.DecideRequest(requests=[pb.SelectionRequest(
            id=1, budget_us=1_000_000, select=query)]))
        reply = await call.read()
        assert reply.replies[0].WhichOneof("result") == "decision"
        call.cancel()


def test_no_log_shows_a_credential(mesh: Mesh) -> None:
    secrets = {MESH_SECRET, SELECTION_TOKEN, MANAGEMENT_TOKEN,
               container_token(MESH_SECRET, "sum"), container_token(MESH_SECRET, "alpha")}
    for log in mesh.workdir.glob("*.log"):
        text = log.read_text()
        assert not [s for s in secrets if s in text], f"{log.name} shows a credential"
