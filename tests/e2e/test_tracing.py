"""One trace per query across the mesh, exported over OTLP to a receiver the test runs;
and the services' JSON logs (query ids, trace ids, the access log; no inputs, no tokens)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import MANAGEMENT_TOKEN, MESH_SECRET, SELECTION_TOKEN, Mesh
from testkit.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver

CLIENT_SPAN_ID = "00f067aa0ba902b7"
# Values that would show up in a log that printed the input or the caller's credential.
SECRET_INPUT = 8191.625
CALLER_TOKEN = "caller-token-never-logged-5f1c"
FRONTEND, SELECTION, CONTAINER = "clipper-frontend", "clipper-selection", "clipper-model-container"
# Nothing shed or late on a busy machine: these tests are about what the spans say.
RELAXED = ("--max-backlog-ms", "60000")


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{CLIENT_SPAN_ID}-01"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("tracing"), flags={
        module: ("--log-format", "json", "--log-level", "DEBUG",
                 *(RELAXED if module != "services.model_container" else ()))
        for module in ("services.selection", "services.frontend", "services.model_container")})
    with pytest.MonkeyPatch.context() as env:
        # What every service the mesh starts reads: the OpenTelemetry way.
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        for name in ("OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_EXPORTER",
                     "OTEL_SDK_DISABLED"):
            env.delenv(name, raising=False)
        try:
            mesh.start_selection()
            mesh.start_frontend("--access-log-sample", "1")
            mesh.start_container("tests.helpers.models:SumModel", "sum", "1")
            # A learning policy: the decision is the selection service's.
            mesh.create_app("learns", ["sum"], policy="exp3", slo_ms=10_000)
            mesh.wait_connected("sum", 1)
            yield mesh
        finally:
            mesh.close()


def query(value: float = 1.0) -> pb.PredictRequest:
    return pb.PredictRequest(application="learns",
                             input=tensors.encode(np.full(4, value, np.float32)))


def by_name(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {len(found)} spans in {sorted(s.name for s in spans)}"
    return found[0]


def complete(spans: list[ReceivedSpan]) -> bool:
    names = {s.name for s in spans}
    return {"clipper.query", "clipper.selection.select", "clipper.container.query",
            "clipper.model.call"} <= names


async def traced_query(stub: pb_grpc.FrontendStub, receiver: OtlpReceiver, value: float,
                       metadata: tuple[tuple[str, str], ...] = ()
                       ) -> tuple[pb.PredictResponse, str, list[ReceivedSpan]]:
    """A query sent with a traceparent of a new trace, (its reply, the trace id, the
    trace's spans) once they came from all three services. The selection service gets
    at most 50 ms to decide, so on a loaded machine the frontend may fall back without
    it: then the query is sent again, in a new trace (three tries)."""
    for attempt in range(3):
        trace_id = f"{attempt + 1:08x}" + uuid.uuid4().hex[8:]
        reply = await stub.Predict(
            query(value), metadata=(("traceparent", traceparent(trace_id)), *metadata),
            timeout=15)
        try:
            return reply, trace_id, receiver.wait_for(complete, trace_id)
        except AssertionError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def test_a_client_trace_continues_through_frontend_selection_and_container(
    stub: pb_grpc.FrontendStub, receiver: OtlpReceiver,
) -> None:
    reply, _, spans = await traced_query(stub, receiver, 1.0)
    assert reply.models == ["sum:1"]
    assert {s.service for s in spans} == {FRONTEND, SELECTION, CONTAINER}

    root = by_name(spans, "clipper.query")
    assert (root.service, root.parent_id) == (FRONTEND, CLIENT_SPAN_ID)
    assert root.attribute("clipper.query_id") == reply.query_id
    assert root.attribute("clipper.slo_miss") is False
    # Every span hangs off another of the same trace: one tree under the client's span.
    ids = {s.span_id for s in spans}
    assert all(s.parent_id in ids for s in spans if s is not root)

    def parent_of(name: str) -> ReceivedSpan:
        child = by_name(spans, name)
        return next(s for s in spans if s.span_id == child.parent_id)

    for name in ("clipper.admit", "clipper.select", "clipper.model", "clipper.combine"):
        assert parent_of(name) is root, name
    assert (parent_of("clipper.selection.select").name,
            parent_of("clipper.selection.select").service) == ("clipper.select", FRONTEND)
    assert parent_of("clipper.cache.lookup").name == "clipper.model"
    assert parent_of("clipper.replica").name == "clipper.model"
    assert (parent_of("clipper.container.query").name,
            parent_of("clipper.container.query").service) == ("clipper.replica", FRONTEND)
    assert parent_of("clipper.container.queue").name == "clipper.container.query"
    assert parent_of("clipper.batch").name == "clipper.container.query"
    assert parent_of("clipper.model.call").name == "clipper.batch"

    assert by_name(spans, "clipper.selection.select").attribute("clipper.policy") == "exp3"
    assert by_name(spans, "clipper.select").attribute("clipper.models") == ["sum"]
    batch = by_name(spans, "clipper.batch")
    assert batch.attribute("clipper.batch.size") == 1
    assert batch.attribute("clipper.batch.actual_ms") > 0
    assert by_name(spans, "clipper.combine").attribute("clipper.default_used") is False


async def test_a_query_without_trace_context_starts_a_trace_at_the_frontend(
    stub: pb_grpc.FrontendStub, receiver: OtlpReceiver,
) -> None:
    reply = await stub.Predict(query(2.0), timeout=15)
    roots = receiver.wait_for(lambda spans: any(
        s.name == "clipper.query" and s.attribute("clipper.query_id") == reply.query_id
        for s in spans))
    root = next(s for s in roots if s.name == "clipper.query"
                and s.attribute("clipper.query_id") == reply.query_id)
    assert root.parent_id == ""
    spans = receiver.wait_for(lambda spans: {"clipper.query", "clipper.container.query"}
                              <= {s.name for s in spans}, root.trace_id)
    assert {s.service for s in spans} >= {FRONTEND, CONTAINER}


async def test_feedback_has_its_own_span_linked_to_the_query(
    stub: pb_grpc.FrontendStub, receiver: OtlpReceiver,
) -> None:
    reply = await stub.Predict(query(3.0), timeout=15)
    await stub.Feedback(pb.FeedbackRequest(application="learns", query_id=reply.query_id,
                                           label=tensors.encode(np.float64(12.0))), timeout=15)
    queries = receiver.wait_for(lambda spans: any(
        s.name == "clipper.query" and s.attribute("clipper.query_id") == reply.query_id
        for s in spans))
    query_trace = next(s for s in queries if s.name == "clipper.query"
                       and s.attribute("clipper.query_id") == reply.query_id).trace_id

    def linked(spans: list[ReceivedSpan]) -> bool:
        return any(s.name == "clipper.feedback" and any(
            link.trace_id.hex() == query_trace for link in s.span.links) for s in spans)

    feedback = next(s for s in receiver.wait_for(linked)
                    if s.name == "clipper.feedback"
                    and any(link.trace_id.hex() == query_trace for link in s.span.links))
    assert feedback.trace_id != query_trace  # its own trace, linked
    spans = receiver.wait_for(lambda spans: any(
        s.name == "clipper.selection.observe" for s in spans), feedback.trace_id)
    observe = by_name(spans, "clipper.selection.observe")
    assert (observe.service, observe.parent_id) == (SELECTION, feedback.span_id)


async def test_json_logs_carry_the_query_and_never_inputs_or_tokens(
    mesh: Mesh, stub: pb_grpc.FrontendStub, receiver: OtlpReceiver,
) -> None:
    caller = (("authorization", f"Bearer {CALLER_TOKEN}"),)
    reply, trace_id, _ = await traced_query(stub, receiver, SECRET_INPUT, caller)
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # an input that is refused
        bad = query(SECRET_INPUT)
        bad.input.shape[:] = [5]
        await stub.Predict(bad, metadata=caller, timeout=15)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def access_records() -> list[dict[str, object]]:
        lines = (mesh.workdir / f"{mesh.frontend.name}.log").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["logger"] == "clipper.access"]

    record = next(r for r in access_records() if r.get("query_id") == reply.query_id)
    assert record["service"] == "frontend"
    assert record["application"] == "learns"
    assert record["status"] == "OK"
    assert record["trace_id"] == trace_id
    assert record["models"] == ["sum:1"] and record["default_used"] is False
    assert isinstance(record["latency_ms"], float)
    assert any(r["status"] == "INVALID_ARGUMENT" for r in access_records())

    raw_input = np.full(4, SECRET_INPUT, np.float32).tobytes()
    for log in mesh.workdir.glob("*.log"):
        text = log.read_text()
        for line in text.splitlines():  # every line one JSON object
            assert "service" in json.loads(line), line
        for secret in (str(SECRET_INPUT), CALLER_TOKEN, MANAGEMENT_TOKEN, MESH_SECRET,
                       SELECTION_TOKEN, raw_input.hex(), repr(raw_input)[2:-1]):
            assert secret not in text, f"{log.name} holds {secret!r}"
