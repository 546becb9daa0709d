"""The Open Inference Protocol on the frontend, through a real mesh.

tritonclient (a client written elsewhere, in its own virtual environment and
process) sends raw contents; typed contents go through our own stubs. Also:
reflection lists every service and health reports each one.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common import tensors
from services.frontend.inference_tensors import CONTENTS_FIELD, TO_DATATYPE
from services.generated.inference import grpc_service_pb2 as oip
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc
from services.mesh import digits
from testkit.mesh import Mesh
from tests.helpers.tools import tool_missing

REPO = Path(__file__).resolve().parents[2]
TRITON_PYTHON = REPO / ".venv-tritonclient" / "bin" / "python"
TRITON_CHECKS = REPO / "tests" / "outside" / "tritonclient_checks.py"
SERVICES = (
    "clipper.v1.Frontend", "clipper.v1.Management", "clipper.v1.Registry",
    "inference.GRPCInferenceService", "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
)
# Inputs per dtype for the apps `double-<dtype>` (the model doubles its input).
VALUES: dict[str, list[Any]] = {
    "bool": [True, False, True],
    **{d: [-3, 0, 5] for d in ("int8", "int16", "int32", "int64")},
    **{d: [1, 2, 3] for d in ("uint8", "uint16", "uint32", "uint64")},
    **{d: [0.5, -1.25, 3.0] for d in ("float16", "float32", "float64")},
    "bytes": [b"a", b"", b"xyz"],
    "string": ["a", "\u00e9", "xyz"],
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory,
         digits_models: dict[str, Path]) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("oip-mesh"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        containers = [
            (str(digits_models["digits-logreg"]), "digits-logreg", "1"),
            ("tests.helpers.models:double", "double", "1"),
            ("tests.helpers.models:VersionOne", "versioned", "1"),
            ("tests.helpers.models:SlowModel", "slow", "1"),
        ]
        with ThreadPoolExecutor(len(containers)) as pool:
            list(pool.map(lambda c: mesh.start_container(*c), containers))
        mesh.wait_connected("versioned", 1)  # the first version to announce is the active one
        mesh.start_container("tests.helpers.models:VersionTwo", "versioned", "2")
        mesh.create_app("one", ["digits-logreg"], shape=(64,), slo_ms=5000)
        mesh.create_app("versioned", ["versioned"], slo_ms=5000)
        mesh.create_app("slow", ["slow"], slo_ms=5000, default=tensors.encode(np.int64(-1)))
        for dtype in VALUES:
            mesh.create_app(f"double-{dtype}", ["double"], dtype=dtype, shape=(-1,), slo_ms=5000)
        for model, count in (("digits-logreg", 1), ("double", 1), ("versioned", 2), ("slow", 1)):
            mesh.wait_connected(model, count)
        yield mesh
    finally:
        mesh.close()


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    _, x_test, _, _ = digits.split()
    return x_test[:16]


@pytest.fixture(scope="module")
def expected_digits(digits_models: dict[str, Path], digits_x: np.ndarray) -> list[int]:
    return [int(v) for v in joblib.load(digits_models["digits-logreg"]).predict(digits_x)]


def doubled(dtype: str) -> np.ndarray:
    """What the `double` model answers for VALUES[dtype]."""
    if dtype in ("bytes", "string"):
        return np.array([v * 2 for v in VALUES[dtype]], dtype=object)
    return np.asarray(VALUES[dtype], dtype=dtype) * 2


def hex_values(values: list[Any]) -> list[str]:
    return [(v.encode() if isinstance(v, str) else v).hex() for v in values]


# ------------------------------------------------------------------ tritonclient


def triton_calls(x: np.ndarray) -> list[dict[str, Any]]:
    one = {"op": "infer", "model": "one", "datatype": "FP32"}
    calls: list[dict[str, Any]] = [
        {"name": "live", "op": "live"},
        {"name": "ready", "op": "ready"},
        {"name": "server_metadata", "op": "server_metadata"},
        {"name": "model_ready", "op": "model_ready", "model": "one"},
        {"name": "model_ready_unknown", "op": "model_ready", "model": "nope"},
        {"name": "model_ready_v2", "op": "model_ready", "model": "versioned", "version": "2"},
        {"name": "model_ready_v9", "op": "model_ready", "model": "versioned", "version": "9"},
        {"name": "metadata", "op": "metadata", "model": "one"},
        {"name": "metadata_unknown", "op": "metadata", "model": "nope"},
        {"name": "unary", **one, "shape": [64], "values": x[0].tolist(),
         "request_id": "q-1", "priority": 1, "timeout_us": 5_000_000},
        {"name": "batch", **one, "shape": [len(x), 64], "values": x.reshape(-1).tolist()},
        {"name": "unknown_model", **one, "model": "nope", "shape": [64],
         "values": x[0].tolist()},
        {"name": "wrong_shape", **one, "shape": [63], "values": x[0][:63].tolist()},
        {"name": "wrong_batch_shape", **one, "shape": [2, 63],
         "values": x[:2, :63].ravel().tolist()},
        {"name": "wrong_datatype", **one, "datatype": "FP64", "shape": [64],
         "values": x[0].tolist()},
        {"name": "slow_with_timeout", "op": "infer", "model": "slow", "datatype": "FP32",
         "shape": [4], "values": [1, 2, 3, 4], "timeout_us": 300_000},
    ]
    for version in ("", "2", "9"):
        calls.append({"name": f"versioned_{version or 'active'}", "op": "infer",
                      "model": "versioned", "version": version, "datatype": "FP32",
                      "shape": [4], "values": [1, 2, 3, 4]})
    for dtype, values in VALUES.items():
        datatype = TO_DATATYPE[dtype]
        wire = hex_values(values) if datatype == "BYTES" else values
        calls.append({"name": f"dtype_{dtype}", "op": "infer", "model": f"double-{dtype}",
                      "datatype": datatype, "shape": [3], "values": wire})
    calls.append({"name": "bytes_batch", "op": "infer", "model": "double-bytes",
                  "datatype": "BYTES", "shape": [2, 3], "values": hex_values(VALUES["bytes"]) * 2})
    return calls


@pytest.fixture(scope="module")
def triton(mesh: Mesh, digits_x: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every tritonclient call's result, by name (one client process for the module)."""
    if not TRITON_PYTHON.exists():
        tool_missing("tritonclient's virtual environment is missing: run `make tritonclient`")
    done = subprocess.run(
        [str(TRITON_PYTHON), str(TRITON_CHECKS), mesh.address],
        input=json.dumps(triton_calls(digits_x)), capture_output=True, text=True,
        timeout=90, check=False,
    )
    assert done.returncode == 0, done.stderr
    return {r["call"]: r for r in json.loads(done.stdout)}


def test_server_is_live_and_ready(triton: dict[str, dict[str, Any]]) -> None:
    assert triton["live"]["live"] is True
    assert triton["ready"]["ready"] is True
    assert triton["server_metadata"]["name"] == "clipper-mesh"
    assert triton["model_ready"]["ready"] is True
    assert triton["model_ready_unknown"]["ready"] is False
    assert triton["model_ready_v2"]["ready"] is True
    assert triton["model_ready_v9"]["ready"] is False


def test_model_metadata(triton: dict[str, dict[str, Any]]) -> None:
    meta = triton["metadata"]
    assert meta["name"] == "one"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["64"]}]
    assert [o["name"] for o in meta["outputs"]] == ["output"]
    assert triton["metadata_unknown"]["status"] == "StatusCode.NOT_FOUND"


def test_infer_unary_equals_the_model(
    triton: dict[str, dict[str, Any]], expected_digits: list[int]
) -> None:
    unary = triton["unary"]
    assert unary["ok"], unary
    assert (unary["datatype"], unary["shape"]) == ("INT64", [])
    assert unary["values"] == expected_digits[:1]
    assert unary["id"] == "q-1"
    params = unary["parameters"]
    assert params["default_used"] == {"bool_param": False}
    assert params["models"] == {"string_param": "digits-logreg:1"}


def test_infer_with_a_batch_dimension(
    triton: dict[str, dict[str, Any]], expected_digits: list[int]
) -> None:
    batch = triton["batch"]
    assert batch["ok"], batch
    assert (batch["shape"], batch["values"]) == ([len(expected_digits)], expected_digits)


def test_version_pins_the_model_version(triton: dict[str, dict[str, Any]]) -> None:
    assert triton["versioned_active"]["values"] == [1]
    pinned = triton["versioned_2"]
    assert (pinned["values"], pinned["model_version"]) == ([2], "2")
    assert triton["versioned_9"]["status"] == "StatusCode.NOT_FOUND"


def test_timeout_parameter_is_the_deadline_and_the_default_is_marked(
    triton: dict[str, dict[str, Any]],
) -> None:
    slow = triton["slow_with_timeout"]
    assert slow["ok"], slow
    assert slow["values"] == [-1]
    assert slow["parameters"]["default_used"] == {"bool_param": True}
    assert "deadline" in slow["parameters"]["default_reason"]["string_param"]
    assert slow["elapsed_s"] < 0.9  # the model takes 1 s; the 5 s SLO was not waited for


@pytest.mark.parametrize(("name", "status"), [
    ("unknown_model", "StatusCode.NOT_FOUND"),
    ("wrong_shape", "StatusCode.INVALID_ARGUMENT"),
    ("wrong_batch_shape", "StatusCode.INVALID_ARGUMENT"),
    ("wrong_datatype", "StatusCode.INVALID_ARGUMENT"),
])
def test_errors_map_to_our_status_codes(
    triton: dict[str, dict[str, Any]], name: str, status: str
) -> None:
    result = triton[name]
    assert (result["ok"], result.get("status")) == (False, status), result
    assert result["message"]


@pytest.mark.parametrize("dtype", list(VALUES))
def test_every_dtype_raw(triton: dict[str, dict[str, Any]], dtype: str) -> None:
    result = triton[f"dtype_{dtype}"]
    assert result["ok"], result
    want = doubled(dtype)
    assert result["datatype"] == TO_DATATYPE[tensors.dtype_name(want)]
    assert result["shape"] == [3]
    if want.dtype == object:
        assert result["values"] == hex_values(list(want))
    else:
        assert result["values"] == want.tolist()


def test_bytes_batch_raw(triton: dict[str, dict[str, Any]]) -> None:
    result = triton["bytes_batch"]
    assert result["ok"], result
    assert result["shape"] == [2, 3]
    assert result["values"] == hex_values(list(doubled("bytes"))) * 2


# ------------------------------------------------------------------ typed contents


@pytest.fixture
def oip_stub(channel: grpc.aio.Channel) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(channel)


def typed_request(model: str, datatype: str, shape: list[int], field: str,
                  values: list[Any]) -> oip.ModelInferRequest:
    contents = oip.InferTensorContents()
    getattr(contents, field).extend(values)
    return oip.ModelInferRequest(model_name=model, inputs=[oip.ModelInferRequest.InferInputTensor(
        name="input", datatype=datatype, shape=shape, contents=contents)])


async def test_typed_contents_get_typed_outputs(
    oip_stub: oip_grpc.GRPCInferenceServiceStub, digits_x: np.ndarray,
    expected_digits: list[int],
) -> None:
    x = digits_x[:4]
    reply = await oip_stub.ModelInfer(
        typed_request("one", "FP32", [4, 64], "fp32_contents", x.reshape(-1).tolist()),
        timeout=10,
    )
    assert not reply.raw_output_contents
    (out,) = reply.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("output", "INT64", [4])
    assert list(out.contents.int64_contents) == expected_digits[:4]


@pytest.mark.parametrize("dtype", [d for d in VALUES if d != "float16"])
async def test_every_dtype_typed(
    oip_stub: oip_grpc.GRPCInferenceServiceStub, dtype: str
) -> None:
    values = [v.encode() if isinstance(v, str) else v for v in VALUES[dtype]]
    reply = await oip_stub.ModelInfer(
        typed_request(f"double-{dtype}", TO_DATATYPE[dtype], [3], CONTENTS_FIELD[dtype], values),
        timeout=10,
    )
    want = doubled(dtype)
    (out,) = reply.outputs
    assert out.datatype == TO_DATATYPE[tensors.dtype_name(want)]
    got = list(getattr(out.contents, CONTENTS_FIELD[tensors.dtype_name(want)]))
    if want.dtype == object:
        assert got == [v.encode() if isinstance(v, str) else v for v in want]
    else:
        assert got == want.tolist()


def _bad_requests() -> dict[str, oip.ModelInferRequest]:
    fp32 = typed_request("double-float32", "FP32", [3], "fp32_contents", [1.0, 2.0, 3.0])
    both = oip.ModelInferRequest()
    both.CopyFrom(fp32)
    both.raw_input_contents.append(b"\0" * 12)
    two_inputs = oip.ModelInferRequest()
    two_inputs.CopyFrom(fp32)
    two_inputs.inputs.append(fp32.inputs[0])
    unknown_output = oip.ModelInferRequest()
    unknown_output.CopyFrom(fp32)
    unknown_output.outputs.add(name="probabilities")
    string_timeout = oip.ModelInferRequest()
    string_timeout.CopyFrom(fp32)
    string_timeout.parameters["timeout"].string_param = "1s"
    bad_bytes = oip.ModelInferRequest(
        model_name="double-bytes", raw_input_contents=[b"\x05\0\0\0ab"],
        inputs=[oip.ModelInferRequest.InferInputTensor(name="input", datatype="BYTES",
                                                       shape=[1])],
    )
    too_many_rows = oip.ModelInferRequest(
        model_name="double-float32", raw_input_contents=[b"\0" * 4 * 4097],
        inputs=[oip.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                       shape=[4097, 1])],
    )
    return {
        "fp16 typed": typed_request("double-float16", "FP16", [3], "fp32_contents", [1, 2, 3]),
        "int8 out of range": typed_request("double-int8", "INT8", [3], "int_contents",
                                           [1, 2, 300]),
        "count mismatch": typed_request("double-float32", "FP32", [4], "fp32_contents",
                                        [1.0, 2.0, 3.0]),
        "unknown datatype": typed_request("double-float32", "FP8", [3], "fp32_contents",
                                          [1.0, 2.0, 3.0]),
        "contents and raw": both,
        "two inputs": two_inputs,
        "unknown output": unknown_output,
        "string timeout": string_timeout,
        "bad raw bytes": bad_bytes,
        "too many rows": too_many_rows,
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
async def test_bad_requests_are_invalid_argument(
    oip_stub: oip_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await oip_stub.ModelInfer(_bad_requests()[case], timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert caught.value.details()


# ------------------------------------------------------------------ reflection and health


async def reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=10)
    await call.write(request)
    await call.done_writing()
    response: reflection_pb2.ServerReflectionResponse = await call.read()
    return response


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    reply = await reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in reply.list_services_response.service}
    assert names == set(SERVICES)
    for service in SERVICES:
        found = await reflect(
            channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
        )
        assert found.WhichOneof("message_response") == "file_descriptor_response", service


async def test_reflection_resolves_method_names(channel: grpc.aio.Channel) -> None:
    found = await reflect(channel, reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="inference.GRPCInferenceService.ModelInfer"))
    assert found.WhichOneof("message_response") == "file_descriptor_response"


async def test_health_reports_each_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICES[:4]):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
