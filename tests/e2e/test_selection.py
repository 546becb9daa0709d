"""Selection that learns, ensembles with confidence, stragglers and the prediction cache,
over real gRPC between real processes."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.common.metrics import sample, scrape
from services.common.processes import free_port
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import Mesh

DEFAULT = tensors.encode(np.int64(-1))
STRAGGLER_SLO_MS = 200
FRONTEND_METRICS = free_port()
CONTAINER_METRICS = free_port()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("selection"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--metrics-port", str(FRONTEND_METRICS))
        for model, name in [("VersionOne", "one"), ("VersionTwo", "two"),
                            ("Counter", "counter"), ("SlowModel", "slow")]:
            extra = ["--metrics-port", str(CONTAINER_METRICS)] if name == "counter" else []
            mesh.start_container(f"tests.helpers.models:{model}", name, "1", *extra)
        mesh.create_app("unsure", ["one", "two"], policy="all", default=DEFAULT,
                        confidence_threshold=0.6)
        mesh.create_app("sure-enough", ["one", "two"], policy="all", default=DEFAULT,
                        confidence_threshold=0.4)
        mesh.create_app("straggler", ["one", "slow"], policy="all", default=DEFAULT,
                        slo_ms=STRAGGLER_SLO_MS)
        mesh.create_app("count", ["counter"])
        mesh.create_app("ensemble", ["one", "two"], policy="exp4", params={"eta": "1"})
        mesh.create_app("users", ["one", "two"], policy="epsilon_greedy",
                        params={"epsilon": "0", "decay": "1"})
        mesh.create_app("nothing-linked", [], default=DEFAULT)
        mesh.create_app("nothing-linked-no-default", [])
        for name in ("one", "two", "counter", "slow"):
            mesh.wait_connected(name, 1)
        yield mesh
    finally:
        mesh.close()


def query(app: str, value: float = 1.0, context_key: str = "") -> pb.PredictRequest:
    return pb.PredictRequest(application=app, context_key=context_key,
                             input=tensors.encode(np.full(4, value, np.float32)))


def label(value: int) -> pb.Tensor:
    return tensors.encode(np.int64(value))


def value_of(t: pb.Tensor) -> object:
    return tensors.decode(t).item()


async def test_low_confidence_serves_the_default_with_the_ensemble_answer(
    stub: pb_grpc.FrontendStub,
) -> None:
    unsure = await stub.Predict(query("unsure"), timeout=5)
    assert unsure.default_used and value_of(unsure.output) == -1
    assert "low confidence: 0.50 is below the application's threshold 0.60" in (
        unsure.default_reason)
    assert value_of(unsure.ensemble_output) == 1  # a tie goes to the first linked model
    assert unsure.confidence == pytest.approx(0.5)
    assert sorted(unsure.models) == ["one:1", "two:1"]

    sure = await stub.Predict(query("sure-enough"), timeout=5)
    assert not sure.default_used and value_of(sure.output) == 1
    assert not sure.HasField("ensemble_output")


async def test_a_straggler_is_left_out_at_the_deadline_and_not_punished(
    stub: pb_grpc.FrontendStub,
) -> None:
    started = time.monotonic()
    reply = await stub.Predict(query("straggler", 2.0), timeout=5)
    elapsed_ms = (time.monotonic() - started) * 1000
    assert elapsed_ms < STRAGGLER_SLO_MS + 100  # the slow model sleeps 1 s
    assert not reply.default_used and value_of(reply.output) == 1
    assert list(reply.models) == ["one:1"] and list(reply.missing_models) == ["slow"]
    assert reply.confidence == pytest.approx(1.0)  # weights renormalised over arrivals
    scored = await stub.Feedback(pb.FeedbackRequest(
        application="straggler", query_id=reply.query_id, label=label(7)), timeout=5)
    assert list(scored.models) == ["one"]  # the missing model is not scored at all


async def counter_now(stub: pb_grpc.FrontendStub, fresh: float) -> int:
    """The counter model's count, read with an input it has not seen."""
    reply = await stub.Predict(query("count", fresh), timeout=5)
    count = value_of(reply.output)
    assert isinstance(count, int)
    return count


async def test_the_cache_serves_repeats_and_coalesces_identical_queries(
    stub: pb_grpc.FrontendStub,
) -> None:
    first = await stub.Predict(query("count", 10.0), timeout=5)
    again = await stub.Predict(query("count", 10.0), timeout=5)
    assert value_of(again.output) == value_of(first.output)  # served from the cache
    assert await counter_now(stub, 11.0) == value_of(first.output) + 1  # the model ran once

    before = await counter_now(stub, 12.0)
    together = await asyncio.gather(*(stub.Predict(query("count", 13.0), timeout=5)
                                      for _ in range(20)))
    assert {value_of(r.output) for r in together} == {before + 1}
    assert await counter_now(stub, 14.0) == before + 2  # twenty queries, one run


async def test_feedback_by_query_id_joins_without_running_the_models(
    stub: pb_grpc.FrontendStub,
) -> None:
    reply = await stub.Predict(query("count", 20.0), timeout=5)
    scored = await stub.Feedback(pb.FeedbackRequest(
        application="count", query_id=reply.query_id, label=label(0)), timeout=5)
    assert list(scored.models) == ["counter"]
    assert await counter_now(stub, 21.0) == value_of(reply.output) + 1

    # Feedback with an input instead asks the models.
    await stub.Feedback(pb.FeedbackRequest(
        application="count", input=tensors.encode(np.full(4, 22.0, np.float32)),
        label=label(0)), timeout=5)
    assert await counter_now(stub, 23.0) == value_of(reply.output) + 3


async def test_exp4_learns_from_feedback_and_keeps_it_over_a_restart(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    first = await stub.Predict(query("ensemble", 30.0), timeout=5)
    assert first.confidence == pytest.approx(0.5)
    for i in range(5):  # "two" is right, "one" is wrong: one loses eta = 1 per round
        reply = await stub.Predict(query("ensemble", 31.0 + i), timeout=5)
        await stub.Feedback(pb.FeedbackRequest(
            application="ensemble", query_id=reply.query_id, label=label(2)), timeout=5)
    learnt = await stub.Predict(query("ensemble", 40.0), timeout=5)
    assert value_of(learnt.output) == 2
    assert learnt.confidence == pytest.approx(1 / (1 + math.exp(-5)))

    await asyncio.to_thread(mesh.restart_selection)
    for _ in range(200):  # the frontend reconnects with backoff; meanwhile it falls back
        after = await stub.Predict(query("ensemble", 41.0), timeout=5)
        if after.confidence != pytest.approx(0.5):
            break
        await asyncio.sleep(0.05)
    assert value_of(after.output) == 2
    assert after.confidence == pytest.approx(learnt.confidence)


async def test_each_user_gets_the_model_that_is_right_for_them(
    stub: pb_grpc.FrontendStub,
) -> None:
    async def teach(user: str, truth: int, rounds: int) -> None:
        for i in range(rounds):  # feedback with an input: every model answers and is scored
            await stub.Feedback(pb.FeedbackRequest(
                application="users", context_key=user, label=label(truth),
                input=tensors.encode(np.full(4, 50.0 + i, np.float32))), timeout=5)

    await teach("alice", 1, 1)
    await teach("bob", 2, 3)  # starts from everyone's state (one: 1 of 1), then learns
    alice = await stub.Predict(query("users", 60.0, "alice"), timeout=5)
    bob = await stub.Predict(query("users", 60.0, "bob"), timeout=5)
    assert list(alice.models) == ["one:1"] and value_of(alice.output) == 1
    assert list(bob.models) == ["two:1"] and value_of(bob.output) == 2
    # A new user starts from what the application learnt from everyone (two: 3 of 4).
    carol = await stub.Predict(query("users", 60.0, "carol"), timeout=5)
    assert list(carol.models) == ["two:1"]


async def test_an_application_without_models_serves_its_default_or_unavailable(
    stub: pb_grpc.FrontendStub,
) -> None:
    reply = await stub.Predict(query("nothing-linked"), timeout=5)
    assert reply.default_used and "has no linked model" in reply.default_reason
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Predict(query("nothing-linked-no-default"), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Feedback(pb.FeedbackRequest(
            application="nothing-linked", input=query("x").input, label=label(1)), timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_feedback_by_query_id_keeps_the_query_s_context(
    stub: pb_grpc.FrontendStub,
) -> None:
    reply = await stub.Predict(query("users", 80.0, "dave"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Feedback(pb.FeedbackRequest(
            application="users", context_key="erin", query_id=reply.query_id,
            label=label(1)), timeout=5)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "was made with context key 'dave'" in (failed.value.details() or "")
    await stub.Feedback(pb.FeedbackRequest(  # no context key: dave's is used
        application="users", query_id=reply.query_id, label=label(1)), timeout=5)




async def test_metrics_count_outcomes_and_selection_fallbacks(
    mesh: Mesh, stub: pb_grpc.FrontendStub,
) -> None:
    before = await asyncio.to_thread(scrape, FRONTEND_METRICS)
    await stub.Predict(query("unsure"), timeout=5)
    await stub.Predict(query("straggler", 3.0), timeout=5)
    assert mesh.selection is not None
    port = mesh.selection.port
    mesh.selection.kill()
    try:
        reply = await stub.Predict(query("ensemble", 70.0), timeout=5)
        assert sorted(reply.models) == ["one:1", "two:1"]  # served without the service
    finally:
        await asyncio.to_thread(mesh.start_selection, port)
    after = await asyncio.to_thread(scrape, FRONTEND_METRICS)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("clipper_selection_fallbacks_total", application="ensemble") >= 1
    assert grew("clipper_defaults_total", application="unsure", cause="low_confidence") == 1
    assert grew("clipper_missing_models_total", application="straggler", model="slow") == 1
    assert grew("clipper_queries_total", application="unsure", outcome="default") == 1
    assert grew("clipper_query_duration_milliseconds_count", application="straggler") == 1

    container = await asyncio.to_thread(scrape, CONTAINER_METRICS)
    assert sample(container, "clipper_batch_size_count") >= 1
    assert sample(container, "clipper_queue_delay_milliseconds_count") >= 1
