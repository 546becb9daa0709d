"""Overload over real gRPC between real processes: a query the frontend cannot take is
refused at once, with a pushback, or answered with the application's flagged default."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.auth import bearer
from services.common.errors import PUSHBACK_KEY
from services.common.metrics import sample, scrape
from services.common.processes import free_port, start_service
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import ENV, SELECTION_TOKEN, Mesh

DEFAULT = tensors.encode(np.int64(-1))
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("overload"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--max-inflight-per-app", "2", "--cache", "none",
                            "--metrics-port", str(METRICS_PORT))
        mesh.start_container("tests.helpers.models:SlowModel", "slow")
        mesh.create_app("busy", ["slow"], slo_ms=3000)
        mesh.create_app("busy-default", ["slow"], slo_ms=3000, default=DEFAULT)
        mesh.wait_connected("slow", 1)
        yield mesh
    finally:
        mesh.close()


async def wait_outstanding(mesh: Mesh, count: int) -> None:
    """Until the frontend has `count` queries out to the slow model's replica."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        replicas = await asyncio.to_thread(mesh.replicas, "slow")
        if replicas and replicas[0].outstanding >= count:
            return
    raise TimeoutError(f"never {count} queries outstanding")


def query(app: str, i: int) -> pb.PredictRequest:
    return pb.PredictRequest(application=app, input=tensors.encode(np.full(4, i, "float32")))


async def test_past_the_in_flight_limit_a_query_is_refused_at_once_with_a_pushback(
    stub: pb_grpc.FrontendStub, mesh: Mesh,
) -> None:
    held = [asyncio.ensure_future(stub.Predict(query("busy", i), timeout=10)) for i in range(2)]
    await wait_outstanding(mesh, 2)  # both admitted and waiting on the 1 s model
    started = time.monotonic()
    call = stub.Predict(query("busy", 9), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    refused_in_s = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-inflight-per-app" in (caught.value.details() or "")
    pushback = {key: value for key, value in await call.trailing_metadata() or ()}
    assert int(pushback[PUSHBACK_KEY]) >= 10
    assert refused_in_s < 1.0  # refused, not queued behind the model
    for reply in await asyncio.gather(*held):
        assert tensors.decode(reply.output).item() == 7  # the admitted ones were served


def test_what_admission_decides_on_is_exported(mesh: Mesh) -> None:
    samples = scrape(METRICS_PORT)
    assert sample(samples, "clipper_admission_queries", application="busy", of="limit") == 2
    assert sample(samples, "clipper_admission_queries", application="busy", of="inflight") == 0
    backlog = {labels["of"]: value for name, labels, value in samples
               if name == "clipper_admission_backlog_milliseconds"}
    assert set(backlog) == {"loop_lag", "accept_wait"}
    assert 0 <= backlog["accept_wait"] < 50  # a frontend this lightly used: no queue


async def test_an_application_with_a_default_answers_it_flagged_when_shedding(
    stub: pb_grpc.FrontendStub, mesh: Mesh,
) -> None:
    held = [asyncio.ensure_future(stub.Predict(query("busy-default", i), timeout=10))
            for i in range(2)]
    await wait_outstanding(mesh, 2)
    reply = await stub.Predict(query("busy-default", 9), timeout=10)
    assert reply.default_used and "overloaded" in reply.default_reason
    assert tensors.decode(reply.output).item() == -1
    await asyncio.gather(*held)


async def test_the_selection_service_bounds_its_work_in_flight_too(tmp_path: Path) -> None:
    """One message of 50 decisions to a selection service allowing 1 in flight: one is
    decided, the other 49 are refused at once with RESOURCE_EXHAUSTED (the frontend
    then falls back), and the stream goes on serving."""
    selection = start_service(
        "services.selection",
        ["--port", "0", "--state", str(tmp_path / "state.json"), "--max-inflight", "1"],
        name="selection", env=ENV, log_path=tmp_path / "selection.log")
    try:
        async with grpc.aio.insecure_channel(selection.address) as channel:
            stream = pb_grpc.SelectionStub(channel).Decide(metadata=bearer(SELECTION_TOKEN))

            async def decide(ids: range) -> dict[str, int]:
                await stream.write(pb.DecideRequest(requests=[
                    pb.SelectionRequest(id=i, budget_us=2_000_000, select=pb.SelectQuery(
                        application="app", context_key=f"user-{i}", policy="exp3",
                        candidates=["a", "b"]))
                    for i in ids]))
                results: dict[str, int] = {}
                while sum(results.values()) < len(ids):
                    for reply in (await stream.read()).replies:
                        kind = reply.WhichOneof("result")
                        if kind == "error":
                            assert reply.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                            assert "in flight" in reply.error.message
                        results[kind] = results.get(kind, 0) + 1
                return results

            assert await decide(range(50)) == {"decision": 1, "error": 49}
            assert await decide(range(50, 51)) == {"decision": 1}
            await stream.done_writing()
    finally:
        selection.stop()


async def test_a_model_without_replicas_does_not_lower_the_limit(tmp_path: Path) -> None:
    """An ensemble with one model down (no replica: it fails at once) is answered by the
    others, flagged missing; that says nothing of load, so admission keeps admitting."""
    mesh = Mesh(tmp_path)
    try:
        mesh.start_selection()
        mesh.start_frontend("--cache", "none")
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        ghost = mesh.start_container("tests.helpers.models:SumModel", "ghost")
        mesh.create_app("partial", ["sum", "ghost"], slo_ms=2000, policy="all")
        mesh.wait_connected("ghost", 1)
        ghost.kill()
        await asyncio.to_thread(mesh.wait_connected, "ghost", 0)
        async with grpc.aio.insecure_channel(mesh.address) as channel:
            stub = pb_grpc.FrontendStub(channel)
            for round_ in range(20):
                replies = await asyncio.gather(*(
                    stub.Predict(query("partial", 16 * round_ + i), timeout=10)
                    for i in range(16)))
                assert all(list(r.missing_models) == ["ghost"] and not r.default_used
                           for r in replies)
    finally:
        mesh.close()
