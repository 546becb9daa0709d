"""A model that hangs, crashes its worker or raises on one input, over real gRPC between
real processes: only its own queries are affected, and the container recovers or exits
to be restarted, whatever the model does."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.model_container.watchdog import EXIT_CODE
from testkit.mesh import Mesh

DEFAULT = tensors.encode(np.float64(-1))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("container-faults"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        yield mesh
    finally:
        mesh.close()


def query(app: str, values: list[float]) -> pb.PredictRequest:
    return pb.PredictRequest(application=app, input=tensors.encode(np.array(values, "float32")))


def logs(mesh: Mesh) -> str:
    """Every service's log so far."""
    return "".join(path.read_text() for path in sorted(mesh.workdir.glob("*.log")))


def wait_exit(proc: subprocess.Popen[str], timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


async def test_a_hung_model_fails_over_to_another_replica_and_its_container_exits(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    hung = mesh.start_container("tests.helpers.models:HangsOnNegative", "flaky", "1",
                                "--batch-timeout-s", "0.3")
    mesh.start_container("tests.helpers.models:SumModel", "flaky")
    mesh.create_app("flaky", ["flaky"], slo_ms=3000)
    mesh.wait_connected("flaky", 2)
    replies = await asyncio.gather(*(
        stub.Predict(query("flaky", [-1, i, 0, 0]), timeout=10) for i in range(6)))
    for i, reply in enumerate(replies):  # every one answered: by the healthy replica
        assert not reply.default_used
        assert tensors.decode(reply.output).item() == i - 1
    code = await asyncio.to_thread(wait_exit, hung.proc, 20)
    assert code == EXIT_CODE, hung.output[-20:]
    assert "replica unhealthy" in logs(mesh)
    mesh.wait_connected("flaky", 1)  # it deregistered on its way out


async def test_a_crashed_worker_process_is_replaced_and_serving_goes_on(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    container = mesh.start_container("tests.helpers.models:CrashesOnNegative", "crashy", "1",
                                     "--worker", "process")
    mesh.create_app("crashy", ["crashy"], slo_ms=10_000, default=DEFAULT)
    mesh.wait_connected("crashy", 1)
    reply = await stub.Predict(query("crashy", [-1, 0, 0, 0]), timeout=15)
    assert reply.default_used and "worker process" in reply.default_reason
    for i in range(3):
        reply = await stub.Predict(query("crashy", [i, 1, 0, 0]), timeout=15)
        assert not reply.default_used, reply.default_reason
        assert tensors.decode(reply.output).item() == i + 1
    assert container.proc.poll() is None


async def one_bad_query_in_a_batch(
    mesh: Mesh, stub: pb_grpc.FrontendStub, model: str, name: str,
) -> list[tuple[list[float], pb.PredictResponse]]:
    """Twelve queries at once to a fresh container of `model`, the eighth with a negative
    first value (what the test models fail on); each query with its reply."""
    mesh.start_container(model, name, "1", "--max-batch-size", "16")
    mesh.create_app(name, [name], slo_ms=5000, default=DEFAULT)
    mesh.wait_connected(name, 1)
    values = [[float(i), 1, 1, 1] for i in range(12)]
    values[7][0] = -5.0
    replies = await asyncio.gather(*(stub.Predict(query(name, v), timeout=10)
                                     for v in values))
    return list(zip(values, replies, strict=True))


async def test_only_the_query_the_model_raises_on_gets_its_error(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    for v, reply in await one_bad_query_in_a_batch(
            mesh, stub, "tests.helpers.models:SlowFailsOnNegative", "poisoned"):
        if v[0] < 0:
            assert reply.default_used and "ValueError: negative input" in reply.default_reason
        else:
            assert not reply.default_used, reply.default_reason
            assert tensors.decode(reply.output).item() == sum(v)


async def test_an_answer_the_model_did_not_declare_fails_that_query_alone(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    """The model declares its output; the one answer of another shape, in a batch of
    good ones, fails alone (the application's default goes out, saying why)."""
    for v, reply in await one_bad_query_in_a_batch(
            mesh, stub, "tests.helpers.models:MisanswersOnNegative", "misanswers"):
        if v[0] < 0:
            assert reply.default_used
            assert ("does not match its declared outputs (sum: float64[]): expected shape [], "
                    "got [3]") in reply.default_reason, reply.default_reason
        else:
            assert not reply.default_used, reply.default_reason
            assert tensors.decode(reply.outputs["sum"]).item() == sum(v)


async def test_a_model_hanging_on_the_event_loop_ends_its_container(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    """A sub-millisecond model runs inline on the loop; if it then hangs, nothing on the
    loop can answer (health, heartbeats, SIGTERM): the watchdog ends the process."""
    container = mesh.start_container("tests.helpers.models:HangsOnNegative", "inline", "1",
                                     "--batch-timeout-s", "1")
    mesh.create_app("inline", ["inline"], slo_ms=500, default=DEFAULT)
    mesh.wait_connected("inline", 1)
    for i in range(30):  # learn that it is fast, so that its batches run inline
        reply = await stub.Predict(query("inline", [i, 0, 0, 0]), timeout=5)
        assert not reply.default_used
    started = time.monotonic()
    reply = await stub.Predict(query("inline", [-1, 0, 0, 0]), timeout=5)
    assert reply.default_used
    code = await asyncio.to_thread(wait_exit, container.proc, 20)
    assert code == EXIT_CODE, container.output[-20:]
    assert time.monotonic() - started < 15
    assert "event loop has not turned" in logs(mesh)


async def test_shutdown_is_bounded_by_the_grace_period_with_a_stuck_worker(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    container = mesh.start_container("tests.helpers.models:HangsOnNegative", "stuck", "1",
                                     "--batch-timeout-s", "600", "--grace-s", "1")
    mesh.create_app("stuck", ["stuck"], slo_ms=300, default=DEFAULT)
    mesh.wait_connected("stuck", 1)
    reply = await stub.Predict(query("stuck", [-1, 0, 0, 0]), timeout=5)
    assert reply.default_used  # the model is now stuck in a worker thread
    started = time.monotonic()
    code = await asyncio.to_thread(container.stop, 20.0)
    assert time.monotonic() - started < 8, container.output[-20:]
    assert code == 0
    reply = await stub.Predict(query("stuck", [1, 0, 0, 0]), timeout=5)
    assert reply.default_used  # nothing serves it any more


async def test_a_model_that_warmed_up_slowly_is_served_once_a_probe_shows_it_fast(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    """Its ten warm-up batches took 40 ms each, so the container learns it too slow for
    a 20 ms SLO; a probe (a query run anyway after a quarter of a second idle) shows it
    fast, and it answers from then on. It once refused every query for minutes."""
    mesh.start_container("tests.helpers.models:SlowForItsFirstBatches", "slowstart", "1",
                         "--input-dtype", "float32", "--input-shape", "4",
                         "--max-batch-size", "4", "--warmup-rounds", "3")
    mesh.create_app("slowstart", ["slowstart"], slo_ms=20, default=DEFAULT)
    mesh.wait_connected("slowstart", 1)
    assert "a batch takes 40." in logs(mesh)  # learnt too slow
    replies = []
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        values = [float(len(replies)), 1, 1, 1]
        reply = await stub.Predict(query("slowstart", values), timeout=5)
        replies.append((time.monotonic() - started, values, reply))
        await asyncio.sleep(0.02)
    late = [(values, reply) for at, values, reply in replies if at > 0.5]
    answered = [(values, reply) for values, reply in late if not reply.default_used]
    assert len(answered) >= 0.9 * len(late), [r.default_reason for _, r in late]
    for values, reply in answered:
        assert tensors.decode(reply.output).item() == sum(values)
    assert not any("estimated wait" in r.default_reason for _, r in late)
