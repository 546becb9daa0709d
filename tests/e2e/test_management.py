"""Management over real gRPC: tokens, applications, versions, restarts, the CLI, health."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common import tensors
from services.common.auth import bearer
from services.common.processes import REPO_ROOT
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import ENV, MANAGEMENT_TOKEN, MGMT, Mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("management"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container("tests.helpers.models:VersionOne", "ver", "1")
        mesh.wait_connected("ver", 1)
        mesh.start_container("tests.helpers.models:VersionTwo", "ver", "2")
        mesh.create_app("ver", ["ver"])
        yield mesh
    finally:
        mesh.close()



def spec() -> pb.TensorSpec:
    return pb.TensorSpec(dtype="float32", shape=[4])


async def answers(channel: grpc.aio.Channel, n: int = 10) -> set[int]:
    stub = pb_grpc.FrontendStub(channel)
    query = pb.PredictRequest(application="ver", input=tensors.encode(np.ones(4, np.float32)))
    replies = await asyncio.gather(*(stub.Predict(query, timeout=5) for _ in range(n)))
    assert not any(r.default_used for r in replies)
    return {int(tensors.decode(r.output).item()) for r in replies}


async def test_management_needs_the_token(channel: grpc.aio.Channel) -> None:
    mgmt = pb_grpc.ManagementStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mgmt.ListApplications(pb.ListApplicationsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mgmt.ListApplications(pb.ListApplicationsRequest(), metadata=bearer("wrong"),
                                    timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_containers_need_their_token(channel: grpc.aio.Channel) -> None:
    registry = pb_grpc.RegistryStub(channel)
    announce = pb.AnnounceRequest(model="intruder", version="1", address="127.0.0.1:1",
                                  replica_id="x")
    for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                           (bearer(MANAGEMENT_TOKEN), grpc.StatusCode.PERMISSION_DENIED)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry.Announce(announce, metadata=metadata, timeout=5)
        assert err.value.code() == code
    models = await pb_grpc.ManagementStub(channel).ListModels(pb.ListModelsRequest(),
                                                              metadata=MGMT, timeout=5)
    assert "intruder" not in {m.name for m in models.models}


async def test_application_lifecycle(channel: grpc.aio.Channel) -> None:
    mgmt = pb_grpc.ManagementStub(channel)
    app = pb.Application(name="life", input_spec=spec(), slo_ms=50, policy="all")
    created = await mgmt.CreateApplication(pb.ApplicationRequest(application=app),
                                           metadata=MGMT, timeout=5)
    assert created.name == "life" and created.policy == "all"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=MGMT,
                                     timeout=5)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    linked = await mgmt.LinkModel(pb.LinkRequest(application="life", model="ver"),
                                  metadata=MGMT, timeout=5)
    assert list(linked.linked_models) == ["ver"]
    app.slo_ms = 80
    app.linked_models[:] = ["ver"]
    updated = await mgmt.UpdateApplication(pb.ApplicationRequest(application=app),
                                           metadata=MGMT, timeout=5)
    assert updated.slo_ms == 80
    unlinked = await mgmt.UnlinkModel(pb.LinkRequest(application="life", model="ver"),
                                      metadata=MGMT, timeout=5)
    assert list(unlinked.linked_models) == []
    await mgmt.DeleteApplication(pb.ApplicationName(name="life"), metadata=MGMT, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mgmt.GetApplication(pb.ApplicationName(name="life"), metadata=MGMT, timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("app", "needle"),
    [
        (pb.Application(name="", input_spec=spec(), slo_ms=10), "name is empty"),
        (pb.Application(name="a", slo_ms=10), "needs an input_spec"),
        (pb.Application(name="a", input_spec=spec(), slo_ms=0), "slo_ms must be in"),
        (pb.Application(name="a", input_spec=spec(), slo_ms=10, policy="magic"),
         "unknown policy 'magic'"),
        # Parameters are checked by the policy's own code when the application is made,
        # not first at its queries.
        (pb.Application(name="a", input_spec=spec(), slo_ms=10, policy="exp3",
                        policy_params={"eta": "fast"}), "eta='fast' is not a number"),
        (pb.Application(name="a", input_spec=spec(), slo_ms=10, policy="epsilon_greedy",
                        policy_params={"epsilon": "2"}), "epsilon=2.0 must be in [0.0, 1.0]"),
        (pb.Application(name="a", input_spec=pb.TensorSpec(dtype="float99"), slo_ms=10),
         "unknown dtype"),
    ],
)
async def test_bad_applications_are_refused(
    channel: grpc.aio.Channel, app: pb.Application, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pb_grpc.ManagementStub(channel).CreateApplication(
            pb.ApplicationRequest(application=app), metadata=MGMT, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")


async def test_setting_a_version_moves_traffic_and_survives_a_restart(
    mesh: Mesh, channel: grpc.aio.Channel
) -> None:
    await asyncio.to_thread(mesh.wait_connected, "ver", 2)  # versions 1 and 2
    mgmt = pb_grpc.ManagementStub(channel)
    assert await answers(channel) == {1}
    model = await mgmt.SetModelVersion(pb.SetModelVersionRequest(model="ver", version="2"),
                                       metadata=MGMT, timeout=5)
    assert model.active_version == "2" and [v.version for v in model.versions] == ["1", "2"]
    assert await answers(channel) == {2}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mgmt.SetModelVersion(pb.SetModelVersionRequest(model="ver", version="9"),
                                   metadata=MGMT, timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # Restart the frontend on the same address: applications, links and versions remain.
    assert mesh.frontend is not None
    port = mesh.frontend.port
    assert mesh.frontend.stop() == 0
    mesh.start_frontend("--port", str(port))
    apps = await asyncio.to_thread(_list_apps, mesh.address)
    assert [(a.name, list(a.linked_models)) for a in apps] == [("ver", ["ver"])]
    await asyncio.to_thread(mesh.wait_connected, "ver", 2)
    async with grpc.aio.insecure_channel(mesh.address) as fresh:
        assert await answers(fresh) == {2}
        await pb_grpc.ManagementStub(fresh).SetModelVersion(
            pb.SetModelVersionRequest(model="ver", version="1"), metadata=MGMT, timeout=5)
        assert await answers(fresh) == {1}  # rollback


def _list_apps(address: str) -> list[pb.Application]:
    with grpc.insecure_channel(address) as ch:
        reply = pb_grpc.ManagementStub(ch).ListApplications(
            pb.ListApplicationsRequest(), metadata=MGMT, timeout=5)
    return list(reply.applications)


def test_the_command_line_tool(mesh: Mesh) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "--frontend", mesh.address, *args],
            cwd=REPO_ROOT, env={**ENV, "PATH": "/usr/bin:/bin"}, capture_output=True,
            text=True, timeout=30,
        )

    made = cli("apps", "create", "cli-app", "--input-dtype", "float32", "--input-shape", "4",
               "--model", "ver", "--default", "-1", "--slo-ms", "2000")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["default_output"] == -1
    listed = json.loads(cli("apps", "list").stdout)
    assert "cli-app" in {a["name"] for a in listed}
    replicas = json.loads(cli("replicas", "list", "--model", "ver").stdout)
    assert {r["version"] for r in replicas} == {"1", "2"}
    predicted = json.loads(cli("predict", "cli-app", "--values", "1,2,3,4").stdout)
    assert predicted["output"] in (1, 2), predicted.get("default_reason")
    assert predicted["models"]
    refused = subprocess.run(
        [sys.executable, "-m", "services.cli", "--frontend", mesh.address, "apps", "list"],
        cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=30,
    )
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


async def test_every_server_has_health_and_reflection(mesh: Mesh) -> None:
    expected = {
        "frontend": {"clipper.v1.Frontend", "clipper.v1.Management", "clipper.v1.Registry"},
        "selection": {"clipper.v1.Selection"},
        "ver": {"clipper.v1.ModelContainer"},
    }
    for kind, services in expected.items():
        proc = next(p for p in reversed(mesh.procs)
                    if p.name.startswith(kind) and p.proc.poll() is None)
        async with grpc.aio.insecure_channel(proc.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for name in ("", *services):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in refl.ServerReflectionInfo(iter([request]), timeout=5):
                listed = {s.name for s in reply.list_services_response.service}
            assert services | {"grpc.health.v1.Health"} <= listed
