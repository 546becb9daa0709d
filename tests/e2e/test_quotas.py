"""Per-client quotas over real gRPC between real processes: past its quota a client gets
RESOURCE_EXHAUSTED with a pushback (never the default), other clients go on, and the
quota is set per application with the frontend's as the default."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.auth import api_key
from services.common.credentials import sha256_hex
from services.common.errors import PUSHBACK_KEY
from services.common.processes import REPO_ROOT
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import ENV, MGMT, Mesh

KEYS = ("key-one", "key-two")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("quotas"))
    try:
        mesh.start_selection()
        # The frontend's default: one query a second per client (burst 1).
        mesh.start_frontend("--client-quota-qps", "1", "--cache", "none")
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.create_app("frontend-default", ["sum"], slo_ms=2000,
                        default=tensors.encode(np.float32(-1)))
        with mesh.management() as mgmt:
            for app in (
                pb.Application(name="generous", client_quota_qps=1000),
                pb.Application(name="keyed", client_quota_qps=0.2, client_quota_burst=3,
                               api_key_sha256=[sha256_hex(k) for k in KEYS]),
            ):
                app.input_spec.CopyFrom(pb.TensorSpec(dtype="float32", shape=[4]))
                app.slo_ms, app.linked_models[:] = 2000, ["sum"]
                mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=MGMT,
                                       timeout=5)
        mesh.wait_connected("sum", 1)
        yield mesh
    finally:
        mesh.close()


def query(app: str, i: int) -> pb.PredictRequest:
    return pb.PredictRequest(application=app, input=tensors.encode(np.full(4, i, "float32")))


async def outcomes(stub: pb_grpc.FrontendStub, app: str, n: int,
                   metadata: tuple[tuple[str, str], ...] = ()) -> list[grpc.aio.AioRpcError | None]:
    """Send `n` queries one after the other: None for each answered, else the error."""
    results: list[grpc.aio.AioRpcError | None] = []
    for i in range(n):
        try:
            reply = await stub.Predict(query(app, i), metadata=metadata, timeout=5)
            assert not reply.default_used
            results.append(None)
        except grpc.aio.AioRpcError as exc:
            results.append(exc)
    return results


async def test_past_its_quota_a_client_is_refused_with_a_pushback_not_the_default(
    stub: pb_grpc.FrontendStub,
) -> None:
    first, second = await outcomes(stub, "frontend-default", 2)
    assert first is None
    assert second is not None and second.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "client quota" in (second.details() or "")
    trailers = {key: value for key, value in second.trailing_metadata() or ()}
    pushback_ms = int(trailers[PUSHBACK_KEY])
    assert 0 < pushback_ms <= 1000
    await asyncio.sleep(pushback_ms / 1000 + 0.05)
    assert await outcomes(stub, "frontend-default", 1) == [None]


async def test_an_application_sets_its_own_quota(stub: pb_grpc.FrontendStub) -> None:
    assert await outcomes(stub, "generous", 20) == [None] * 20


async def test_each_key_is_its_own_client(stub: pb_grpc.FrontendStub) -> None:
    one, two = api_key(KEYS[0]), api_key(KEYS[1])
    results = await outcomes(stub, "keyed", 5, one)
    assert results[:3] == [None] * 3  # the burst
    assert all(r is not None and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
               for r in results[3:])
    assert await outcomes(stub, "keyed", 3, two) == [None] * 3


async def test_a_refusal_is_fast_and_other_queries_go_on(stub: pb_grpc.FrontendStub) -> None:
    """A client hammering past its quota costs the others nothing: its refusals are
    immediate and the generous application is served throughout."""
    await outcomes(stub, "frontend-default", 1)
    started = time.monotonic()
    hammer = await asyncio.gather(*(stub.Predict(query("frontend-default", i), timeout=5)
                                    for i in range(200)), return_exceptions=True)
    refused = [r for r in hammer if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) >= 199
    assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert time.monotonic() - started < 5
    assert await outcomes(stub, "generous", 5) == [None] * 5


def test_the_cli_sets_a_quota(mesh: Mesh) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "--frontend", mesh.address, "apps", "quota",
         "generous", "--client-quota-qps", "7", "--client-quota-burst", "9"],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=30, check=True)
    shown = json.loads(result.stdout)
    assert shown["client_quota_qps"] == 7 and shown["client_quota_burst"] == 9
