"""Several named inputs and outputs per application, through real processes: an ONNX model
of two inputs (features and a mask) and two outputs (label and probabilities) served
natively and through the Open Inference Protocol, per-tensor validation, and an
ensemble of three two-headed models combined output by output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from services.client import Client
from services.common import tensors
from services.common.processes import REPO_ROOT
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.generated.inference import grpc_service_pb2 as oip
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc
from testkit import model_files
from testkit.mesh import ENV, MGMT, Mesh
from tests.e2e.test_inference_protocol import TRITON_CHECKS, TRITON_PYTHON
from tests.helpers import named_models
from tests.helpers.tools import tool_missing

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

RNG = np.random.default_rng(7)
FEATURES = RNG.normal(size=(6, 4)).astype(np.float32)
MASK = RNG.uniform(size=(6, 4)) < 0.7
INPUTS = [pb.TensorSpec(name="features", dtype="float32", shape=[4]),
          pb.TensorSpec(name="mask", dtype="bool", shape=[4])]
OUTPUTS = [pb.TensorSpec(name="label", dtype="int64"),
           pb.TensorSpec(name="probabilities", dtype="float32", shape=[3])]


def _create(mesh: Mesh, name: str, models: list[str], policy: str = "static",
            outputs: list[pb.TensorSpec] = OUTPUTS) -> pb.Application:
    app = pb.Application(name=name, inputs=INPUTS, outputs=outputs, slo_ms=5000,
                         policy=policy, linked_models=models)
    with mesh.management() as mgmt:
        made: pb.Application = mgmt.CreateApplication(
            pb.ApplicationRequest(application=app), metadata=MGMT, timeout=5)
    return made


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("named")
    onnx_path = root / "masked.onnx"
    model_files.onnx_masked(onnx_path)
    mesh = Mesh(root)
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container(str(onnx_path), "masked", "1", "--output", "label,probabilities")
        for head in ("HeadA", "HeadB", "HeadC"):
            # One head in worker processes: named tensors cross the process boundary too.
            extra = ("--worker", "process") if head == "HeadB" else ()
            mesh.start_container(f"tests.helpers.named_models:{head}", head.lower(), "1", *extra)
        for model in ("masked", "heada", "headb", "headc"):
            mesh.wait_connected(model, 1)
        _create(mesh, "masked", ["masked"])
        _create(mesh, "heads", ["heada", "headb", "headc"], policy="all",
                outputs=[*OUTPUTS, pb.TensorSpec(name="masked_sum", dtype="float64")])
        yield mesh
    finally:
        mesh.close()


def _named(i: int) -> dict[str, pb.Tensor]:
    return {"features": tensors.encode(FEATURES[i]), "mask": tensors.encode(MASK[i])}


async def test_a_two_input_onnx_model_answers_both_outputs(
    stub: pb_grpc.FrontendStub,
) -> None:
    for i in range(len(FEATURES)):
        reply = await stub.Predict(pb.PredictRequest(application="masked", inputs=_named(i)),
                                   timeout=10)
        label, probabilities = model_files.masked_reference(FEATURES[i], MASK[i])
        assert not reply.HasField("output") and not reply.default_used
        assert set(reply.outputs) == {"label", "probabilities"}
        assert tensors.decode(reply.outputs["label"]).item() == label
        np.testing.assert_allclose(tensors.decode(reply.outputs["probabilities"]),
                                   probabilities, rtol=1e-5)


@pytest.mark.parametrize(("inputs", "single", "needle"), [
    ({"features": tensors.encode(FEATURES[0])}, None, "missing input 'mask'"),
    ({**_named(0), "extra": tensors.encode(MASK[0])}, None, "unknown input 'extra'"),
    ({"features": tensors.encode(FEATURES[0]), "mask": tensors.encode(MASK[0].astype(np.int8))},
     None, "input 'mask': expected dtype bool, got int8"),
    ({"features": tensors.encode(FEATURES[0, :3]), "mask": tensors.encode(MASK[0])},
     None, r"input 'features': expected shape \[4\], got \[3\]"),
    ({}, tensors.encode(FEATURES[0]), "takes named inputs .*send them in `inputs`, not `input`"),
    ({}, None, "takes named inputs"),
    (_named(0), tensors.encode(FEATURES[0]), "not both"),
    ({"features": tensors.encode(np.full(4, np.nan, np.float32)), "mask": tensors.encode(MASK[0])},
     None, "input 'features' holds NaN"),
])
async def test_each_named_input_is_checked(
    stub: pb_grpc.FrontendStub, inputs: dict[str, pb.Tensor], single: pb.Tensor | None,
    needle: str,
) -> None:
    request = pb.PredictRequest(application="masked", inputs=inputs)
    if single is not None:
        request.input.CopyFrom(single)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() is not None
    assert re.search(needle, err.value.details()), err.value.details()


def test_the_client_library_sends_and_reads_named_tensors(mesh: Mesh) -> None:
    with Client(mesh.address) as client:
        answer = client.predict("masked", {"features": FEATURES[3], "mask": MASK[3]})
    label, probabilities = model_files.masked_reference(FEATURES[3], MASK[3])
    assert answer.output.size == 0
    assert answer.outputs["label"].item() == label
    np.testing.assert_allclose(answer.outputs["probabilities"], probabilities, rtol=1e-5)


async def test_an_ensemble_combines_each_output_by_its_rule(
    stub: pb_grpc.FrontendStub,
) -> None:
    reply = await stub.Predict(pb.PredictRequest(application="heads", inputs=_named(1)),
                               timeout=10)
    assert sorted(reply.models) == ["heada:1", "headb:1", "headc:1"]
    # The label by vote (two heads of three say 1), the probabilities by mean.
    assert tensors.decode(reply.outputs["label"]).item() == 1
    mean = np.mean([p for _, p in named_models.ANSWERS.values()], axis=0)
    np.testing.assert_allclose(tensors.decode(reply.outputs["probabilities"]), mean, rtol=1e-6)
    masked_sum = float((FEATURES[1] * MASK[1]).sum())
    assert tensors.decode(reply.outputs["masked_sum"]).item() == pytest.approx(masked_sum,
                                                                                rel=1e-6)
    assert reply.confidence == pytest.approx(2 / 3)  # the label's, the first output


async def test_feedback_by_query_id_scores_the_first_output(
    stub: pb_grpc.FrontendStub,
) -> None:
    reply = await stub.Predict(pb.PredictRequest(application="heads", inputs=_named(2)),
                               timeout=10)
    scored = await stub.Feedback(pb.FeedbackRequest(
        application="heads", query_id=reply.query_id, label=tensors.encode(np.int64(1))),
        timeout=10)
    assert sorted(scored.models) == ["heada", "headb", "headc"]


async def test_feedback_with_named_inputs_asks_the_models_again_and_scores_them(
    stub: pb_grpc.FrontendStub,
) -> None:
    scored = await stub.Feedback(pb.FeedbackRequest(
        application="heads", inputs=_named(1), label=tensors.encode(np.int64(1))),
        timeout=10)
    assert sorted(scored.models) == ["heada", "headb", "headc"]
    with pytest.raises(grpc.aio.AioRpcError) as err:  # checked as a query's would be
        await stub.Feedback(pb.FeedbackRequest(
            application="heads", inputs={"features": _named(1)["features"]},
            label=tensors.encode(np.int64(1))), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mask" in (err.value.details() or ""), err.value.details()


def test_specs_round_trip_through_management(mesh: Mesh) -> None:
    with mesh.management() as mgmt:
        app = mgmt.GetApplication(pb.ApplicationName(name="masked"), metadata=MGMT, timeout=5)
        models = mgmt.ListModels(pb.ListModelsRequest(), metadata=MGMT, timeout=5)
    assert [(s.name, s.dtype, list(s.shape)) for s in app.inputs] == [
        ("features", "float32", [4]), ("mask", "bool", [4])]
    assert not app.HasField("input_spec")
    (version,) = next(m for m in models.models if m.name == "masked").versions
    # Read from the ONNX model by the container and announced.
    assert [(s.name, s.dtype, list(s.shape)) for s in version.inputs] == [
        ("features", "float32", [4]), ("mask", "bool", [4])]
    assert [(s.name, s.dtype, list(s.shape)) for s in version.outputs] == [
        ("label", "int64", []), ("probabilities", "float32", [3])]


@pytest.mark.parametrize(("change", "needle"), [
    ({"inputs": [pb.TensorSpec(dtype="float32", shape=[4])]}, r"inputs\[0\] has no name"),
    ({"inputs": [INPUTS[0], INPUTS[0]]}, "more than once"),
    ({"input_spec": pb.TensorSpec(dtype="float32", shape=[4])}, "both an input_spec"),
    ({"default_output": tensors.encode(np.int64(0))}, "takes default_outputs"),
    ({"default_outputs": {"label": tensors.encode(np.int64(0))}},
     "missing default output 'probabilities'"),
    ({"default_outputs": {"label": tensors.encode(np.int64(0)),
                          "probabilities": tensors.encode(np.zeros(2, np.float32))}},
     "default output 'probabilities': .*shape"),
])
def test_bad_named_specs_are_refused(mesh: Mesh, change: dict[str, Any], needle: str) -> None:
    app = pb.Application(name="bad", inputs=INPUTS, outputs=OUTPUTS, slo_ms=100)
    for key, value in change.items():
        field = getattr(app, key)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        elif isinstance(value, dict):
            for name, tensor in value.items():
                field[name].CopyFrom(tensor)
        else:
            field.CopyFrom(value)
    with mesh.management() as mgmt, pytest.raises(grpc.RpcError) as err:
        mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=MGMT, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(needle, err.value.details()), err.value.details()


def test_apps_create_takes_named_inputs_and_outputs(mesh: Mesh) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "--frontend", mesh.address, "apps",
             "create", *args], cwd=REPO_ROOT, env={**ENV, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30)

    made = cli("cli-named", "--input", "features:float32:4", "--input", "mask:bool:4",
               "--output", "label:int64:", "--output", "probabilities:float32:3",
               "--model", "masked")
    assert made.returncode == 0, made.stderr
    shown = json.loads(made.stdout)
    assert [(t["name"], t["dtype"]) for t in shown["inputs"]] == [("features", "float32"),
                                                                  ("mask", "bool")]
    assert [t["name"] for t in shown["outputs"]] == ["label", "probabilities"]
    neither = cli("cli-none", "--model", "masked")
    assert neither.returncode != 0 and "--input NAME:DTYPE:SHAPE" in neither.stderr
    malformed = cli("cli-bad", "--input", "features")
    assert malformed.returncode != 0 and "expected NAME:DTYPE:SHAPE" in malformed.stderr


# ------------------------------------------------------------------ Open Inference Protocol


def _oip_input(name: str, array: np.ndarray) -> oip.ModelInferRequest.InferInputTensor:
    datatype = {"float32": "FP32", "bool": "BOOL"}[array.dtype.name]
    return oip.ModelInferRequest.InferInputTensor(name=name, datatype=datatype,
                                                  shape=list(array.shape))


async def test_oip_takes_two_inputs_and_answers_two_outputs(mesh: Mesh) -> None:
    request = oip.ModelInferRequest(
        model_name="masked",
        inputs=[_oip_input("mask", MASK), _oip_input("features", FEATURES)],  # any order
        raw_input_contents=[MASK.tobytes(), FEATURES.tobytes()],
    )
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        reply = await stub.ModelInfer(request, timeout=10)
        meta = await stub.ModelMetadata(oip.ModelMetadataRequest(name="masked"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(oip.ModelInferRequest(
                model_name="masked", inputs=[_oip_input("features", FEATURES),
                                             _oip_input("mask", MASK[:2])],
                raw_input_contents=[FEATURES.tobytes(), MASK[:2].tobytes()]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "disagree on the batch" in (err.value.details() or "")
    assert [i.name for i in meta.inputs] == ["features", "mask"]
    assert [(o.name, o.datatype) for o in meta.outputs] == [("label", "INT64"),
                                                            ("probabilities", "FP32")]
    outputs = {o.name: (o, raw) for o, raw in zip(reply.outputs, reply.raw_output_contents,
                                                   strict=True)}
    label, probabilities = model_files.masked_reference(FEATURES, MASK)
    out, raw = outputs["label"]
    assert list(out.shape) == [len(FEATURES)]
    assert np.frombuffer(raw, np.int64).tolist() == label.tolist()
    out, raw = outputs["probabilities"]
    assert list(out.shape) == [len(FEATURES), 3]
    np.testing.assert_allclose(np.frombuffer(raw, np.float32).reshape(-1, 3), probabilities,
                               rtol=1e-5)


def test_tritonclient_sends_two_inputs_and_reads_two_outputs(mesh: Mesh) -> None:
    if not TRITON_PYTHON.exists():
        tool_missing("tritonclient's virtual environment is missing: run `make tritonclient`")
    tensors_in = [
        {"name": "features", "datatype": "FP32", "shape": list(FEATURES.shape),
         "values": FEATURES.reshape(-1).tolist()},
        {"name": "mask", "datatype": "BOOL", "shape": list(MASK.shape),
         "values": MASK.reshape(-1).tolist()},
    ]
    calls = [
        {"name": "both", "op": "infer_named", "model": "masked", "inputs": tensors_in,
         "outputs": ["label", "probabilities"]},
        {"name": "label_only", "op": "infer_named", "model": "masked", "inputs": tensors_in,
         "outputs": ["label"]},
        {"name": "missing_mask", "op": "infer_named", "model": "masked",
         "inputs": tensors_in[:1], "outputs": ["label"]},
        {"name": "unknown_output", "op": "infer_named", "model": "masked",
         "inputs": tensors_in, "outputs": ["nope"]},
    ]
    done = subprocess.run([str(TRITON_PYTHON), str(TRITON_CHECKS), mesh.address],
                          input=json.dumps(calls), capture_output=True, text=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stderr
    results = {r["call"]: r for r in json.loads(done.stdout)}
    label, probabilities = model_files.masked_reference(FEATURES, MASK)
    both = results["both"]
    assert both["ok"], both
    assert both["outputs"]["label"]["values"] == label.tolist()
    assert both["outputs"]["probabilities"]["shape"] == [len(FEATURES), 3]
    np.testing.assert_allclose(both["outputs"]["probabilities"]["values"],
                               probabilities.reshape(-1), rtol=1e-5)
    assert list(results["label_only"]["outputs"]) == ["label"]
    for name, needle in (("missing_mask", "missing input 'mask'"),
                         ("unknown_output", "unknown output 'nope'")):
        assert (results[name]["ok"], results[name]["status"]) == (
            False, "StatusCode.INVALID_ARGUMENT"), results[name]
        assert needle in results[name]["message"]
