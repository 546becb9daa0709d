"""Limits on input and state, over real gRPC between real processes: hostile requests get
a clear status before any work, and the queries around them go on."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.generated.inference import grpc_service_pb2 as oip
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc
from testkit.mesh import MGMT, Mesh, container_metadata

SLO_MS = 300
MAX_APPS = 6


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("bounded-input"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--max-applications", str(MAX_APPS), "--max-replicas", "2",
                            "--max-linked-models", "3")
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.create_app("sum", ["sum"], slo_ms=SLO_MS)
        mesh.create_app("sum-nan-ok", ["sum"], slo_ms=SLO_MS, allow_non_finite=True)
        mesh.wait_connected("sum", 1)
        yield mesh
    finally:
        mesh.close()


def hostile_shape() -> pb.Tensor:
    """About 140 KB: 16,000 dimensions of 2**62 (math.prod of them takes seconds)."""
    return pb.Tensor(dtype="float32", shape=[1 << 62] * 16_000, raw=b"\0" * 16)


def query(app: str, values: list[float]) -> pb.PredictRequest:
    return pb.PredictRequest(application=app, input=tensors.encode(np.array(values, "float32")))


async def expect(call: object, code: grpc.StatusCode, *words: str) -> str:
    """Await `call`; it must fail with `code` and a message holding `words`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    for word in words:
        assert word in details, details
    return details


async def test_a_pathological_shape_does_not_delay_concurrent_queries(
    stub: pb_grpc.FrontendStub,
) -> None:
    """Without the rank check first, each hostile query held the frontend's loop for
    about 0.6 s, and every valid query around it missed its 300 ms SLO."""
    hostile = [
        expect(stub.Predict(pb.PredictRequest(application="sum", input=hostile_shape()),
                            timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "--max-rank")
        for _ in range(20)
    ]
    valid = [stub.Predict(query("sum", [i, 1, 2, 3]), timeout=10) for i in range(40)]
    results = await asyncio.gather(*hostile, *valid)
    for i, reply in enumerate(results[len(hostile):]):
        assert not reply.default_used
        assert tensors.decode(reply.output).item() == i + 6


async def test_ranks_past_numpys_limit_get_invalid_argument_not_internal(
    stub: pb_grpc.FrontendStub,
) -> None:
    value = pb.Tensor(dtype="float32", shape=[1] * 65, raw=b"\0" * 4)
    await expect(stub.Predict(pb.PredictRequest(application="sum", input=value), timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "rank 65 exceeds the limit of 32")


@pytest.mark.parametrize(("field", "value", "words"), [
    ("application", "x" * 129, ("application name", "--max-name-length")),
    ("context_key", "k" * 257, ("context_key", "--max-context-key-length")),
    ("query_id", "q" * 65, ("query_id", "--max-query-id-length")),
    ("query_id", "q1\n2026-11-30 INFO forged line", ("query_id", "control characters")),
])
async def test_overlong_strings_are_refused_before_any_lookup(
    stub: pb_grpc.FrontendStub, field: str, value: str, words: tuple[str, ...]
) -> None:
    request = query("sum", [1, 2, 3, 4])
    setattr(request, field, value)
    details = await expect(stub.Predict(request, timeout=5),
                           grpc.StatusCode.INVALID_ARGUMENT, *words)
    assert value not in details  # never echoed whole


async def test_nan_and_infinity_are_refused_unless_the_application_allows_them(
    stub: pb_grpc.FrontendStub,
) -> None:
    for bad in (math.nan, math.inf, -math.inf):
        await expect(stub.Predict(query("sum", [1, bad, 2, 3]), timeout=5),
                     grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinity", "allow_non_finite")
    reply = await stub.Predict(query("sum-nan-ok", [1, math.nan, 2, 3]), timeout=5)
    assert math.isnan(tensors.decode(reply.output).item())
    assert not math.isnan(reply.confidence)
    label = tensors.encode(np.float64(math.nan))
    await expect(stub.Feedback(pb.FeedbackRequest(application="sum", query_id="x", label=label),
                               timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "label")


async def test_open_inference_protocol_requests_are_bounded_too(
    channel: grpc.aio.Channel,
) -> None:
    oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1 << 62] * 16_000)
    hostile = oip.ModelInferRequest(model_name="sum", inputs=[tensor],
                                    raw_input_contents=[b"\0" * 16])
    await expect(oip_stub.ModelInfer(hostile, timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "--max-rank")
    await expect(oip_stub.ModelInfer(oip.ModelInferRequest(model_name="m" * 200), timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "model_name", "--max-name-length")


def app_message(name: str, models: list[str], **fields: object) -> pb.ApplicationRequest:
    return pb.ApplicationRequest(application=pb.Application(
        name=name, input_spec=pb.TensorSpec(dtype="float32", shape=[4]), slo_ms=100,
        linked_models=models, **fields))


async def test_management_refuses_names_that_collide_and_counts_past_the_limits(
    channel: grpc.aio.Channel,
) -> None:
    mgmt = pb_grpc.ManagementStub(channel)
    for name in ("a/b", "a:b", "", "x" * 129, "caf\u00e9"):
        await expect(mgmt.CreateApplication(app_message(name, []), metadata=MGMT, timeout=5),
                     grpc.StatusCode.INVALID_ARGUMENT)
    await expect(mgmt.CreateApplication(app_message("ok", ["m/1"]), metadata=MGMT, timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "model name")
    await expect(mgmt.CreateApplication(app_message("ok", ["a", "b", "c", "d"]), metadata=MGMT,
                                        timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "--max-linked-models")
    await expect(mgmt.CreateApplication(
        app_message("ok", [], policy_params={f"k{i}": "1" for i in range(65)}),
        metadata=MGMT, timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "--max-policy-params")
    spec = pb.TensorSpec(dtype="float32", shape=[1] * 33)
    request = app_message("ok", [])
    request.application.input_spec.CopyFrom(spec)
    await expect(mgmt.CreateApplication(request, metadata=MGMT, timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "--max-rank")

    await mgmt.CreateApplication(app_message("linked", ["a", "b", "c"]), metadata=MGMT,
                                 timeout=5)
    await expect(mgmt.LinkModel(pb.LinkRequest(application="linked", model="d"), metadata=MGMT,
                                timeout=5),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "--max-linked-models")
    existing = len((await mgmt.ListApplications(pb.ListApplicationsRequest(), metadata=MGMT,
                                                timeout=5)).applications)
    for i in range(MAX_APPS - existing):
        await mgmt.CreateApplication(app_message(f"filler-{i}", []), metadata=MGMT, timeout=5)
    await expect(mgmt.CreateApplication(app_message("one-too-many", []), metadata=MGMT,
                                        timeout=5),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "--max-applications")


async def test_announcements_are_checked_before_they_are_recorded(
    channel: grpc.aio.Channel, mesh: Mesh,
) -> None:
    registry = pb_grpc.RegistryStub(channel)

    def announce(model: str, replica_id: str, address: str = "127.0.0.1:9") -> object:
        return registry.Announce(
            pb.AnnounceRequest(model=model, version="1", address=address, replica_id=replica_id,
                               replica_secret=f"secret-of-{replica_id}"),
            metadata=container_metadata(model), timeout=5)

    await expect(announce("bad/name", "r1"), grpc.StatusCode.INVALID_ARGUMENT, "model name")
    await expect(announce("sum", "r1", "no-port"), grpc.StatusCode.INVALID_ARGUMENT, "HOST:PORT")
    await expect(announce("sum", "r1", "h" * 300 + ":1"), grpc.StatusCode.INVALID_ARGUMENT,
                 "--max-address-length")
    await announce("sum", "extra-replica")  # the second of two allowed
    await expect(announce("sum", "third-replica"), grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "--max-replicas")
    await registry.Deregister(pb.DeregisterRequest(replica_id="extra-replica",
                                                   replica_secret="secret-of-extra-replica"),
                              metadata=container_metadata("sum"), timeout=5)
    assert [r.replica_id for r in mesh.replicas("sum")] != ["extra-replica"]
