"""A model of each runtime, served from its file or its model directory, answers through
the mesh what the framework answers in process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from tests.helpers import model_files
from tests.helpers.mesh import MGMT, Mesh

pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")

X, _ = model_files.digits()
QUERIES = X[100:130]


def _model_dir(root: Path, name: str, model_file: str, manifest: dict[str, Any]) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "model.json").write_text(json.dumps({"name": name, **manifest}))
    return directory / model_file


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, dict[str, Any]]]:
    """(mesh, what each application should answer for QUERIES)."""
    root = tmp_path_factory.mktemp("runtimes")
    expected: dict[str, Any] = {}
    # ONNX from a model directory: its input spec from the model, its probabilities asked.
    onnx_dir = _model_dir(root, "rt-onnx", "model.onnx", {
        "output": "probabilities",
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [10]}],
        "batching": {"max_batch_size": 16}}).parent
    estimator = model_files.onnx_classifier(onnx_dir / "model.onnx")
    expected["rt-onnx"] = estimator.predict_proba(QUERIES)
    # scikit-learn from a model directory (joblib), answering decision_function.
    sk_dir = _model_dir(root, "rt-sklearn", "model.joblib", {
        "output": "decision_function",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [64]}]}).parent
    joblib.dump(estimator, sk_dir / "model.joblib")
    expected["rt-sklearn"] = estimator.decision_function(QUERIES)
    # Boosters from their files, with flags.
    xgb_path = root / "digits.ubj"
    booster = model_files.xgboost_classifier(xgb_path)
    import xgboost as xgb

    expected["rt-xgboost"] = booster.predict(xgb.DMatrix(QUERIES))
    lgb_path = root / "digits.txt"
    expected["rt-lightgbm"] = model_files.lightgbm_classifier(lgb_path).predict(
        QUERIES).argmax(axis=1)

    mesh = Mesh(root)
    try:
        mesh.start_selection()
        mesh.start_frontend()
        for name, directory in (("rt-onnx", onnx_dir), ("rt-sklearn", sk_dir)):
            mesh.start_container("", name, "1", "--model-dir", str(directory),
                                 "--native-threads", "1")
        mesh.start_container(str(xgb_path), "rt-xgboost", "1", "--output", "predict_proba")
        mesh.start_container(str(lgb_path), "rt-lightgbm", "1", "--worker", "process")
        for name in expected:
            mesh.wait_connected(name, 1)
            mesh.create_app(name, [name], shape=(64,), slo_ms=5000)
        yield mesh, expected
    finally:
        mesh.close()


@pytest.mark.parametrize("app", ["rt-onnx", "rt-sklearn", "rt-xgboost", "rt-lightgbm"])
def test_each_runtime_answers_as_its_framework(served: tuple[Mesh, dict[str, Any]],
                                               app: str) -> None:
    mesh, expected = served
    with grpc.insecure_channel(mesh.address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        answers = []
        for row in QUERIES:
            reply = stub.Predict(pb.PredictRequest(application=app, input=tensors.encode(row)),
                                 timeout=10)
            assert not reply.default_used, reply.default_reason
            answers.append(tensors.decode(reply.output))
    np.testing.assert_allclose(np.stack(answers), expected[app], rtol=1e-4, atol=1e-5)


def test_the_container_takes_its_input_spec_from_the_onnx_model(
        served: tuple[Mesh, dict[str, Any]]) -> None:
    mesh, _ = served
    with mesh.management() as mgmt:
        models = mgmt.ListModels(pb.ListModelsRequest(), metadata=MGMT, timeout=5).models
    (model,) = [m for m in models if m.name == "rt-onnx"]
    (version,) = model.versions
    assert (version.input_spec.dtype, list(version.input_spec.shape)) == ("float32", [64])
