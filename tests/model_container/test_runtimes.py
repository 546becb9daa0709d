"""Each runtime serves a real small model made here, and answers as the framework does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.svm import SVC

from services.common.tensors import TensorSpec
from services.model_container.runner import ModelRunner
from services.model_container.runtimes import runtime_for
from services.model_container.sdk import ModelLoadFailed, ModelSource, load_model
from testkit import model_files

X, Y = model_files.digits()
QUERIES = [X[i] for i in range(0, 40, 3)]  # 14 distinct digits


def test_sklearn_answers_each_output(tmp_path: Path) -> None:
    path = tmp_path / "m.joblib"
    estimator = model_files.logreg()
    joblib.dump(estimator, path)
    stacked = np.stack(QUERIES)
    labels = load_model(str(path)).predict_batch(QUERIES)
    assert [int(v) for v in labels] == estimator.predict(stacked).tolist()
    proba = load_model(str(path), output="predict_proba").predict_batch(QUERIES)
    np.testing.assert_allclose(np.stack(proba), estimator.predict_proba(stacked))
    margins = load_model(str(path), output="decision_function").predict_batch(QUERIES)
    np.testing.assert_allclose(np.stack(margins), estimator.decision_function(stacked))


def test_sklearn_without_the_method_asked_says_so(tmp_path: Path) -> None:
    path = tmp_path / "svc.joblib"
    joblib.dump(SVC().fit(X[:100], Y[:100]), path)
    with pytest.raises(ModelLoadFailed, match=r"SVC has no predict_proba\(X\)"):
        load_model(str(path), output="predict_proba")
    with pytest.raises(ModelLoadFailed, match="answers one of predict, predict_proba"):
        load_model(str(path), output="probabilities")


@pytest.mark.parametrize("batch", [None, 1])
def test_onnx_reads_its_input_and_answers_by_output_name(tmp_path: Path,
                                                         batch: int | None) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skl2onnx")
    path = tmp_path / "digits.onnx"
    estimator = model_files.onnx_classifier(path, batch)
    assert runtime_for(str(path)) == "onnx"
    model = load_model(str(path), native_threads=1)
    assert model.input_spec == TensorSpec("float32", (64,))  # type: ignore[attr-defined]
    stacked = np.stack(QUERIES)
    # float64 queries are cast to the model's float32
    labels = model.predict_batch([q.astype(np.float64) for q in QUERIES])
    assert [int(v) for v in labels] == estimator.predict(stacked).tolist()
    proba = load_model(str(path), output="probabilities").predict_batch(QUERIES)
    np.testing.assert_allclose(np.stack(proba), estimator.predict_proba(stacked), atol=1e-5)


def test_onnx_names_its_outputs_when_asked_for_another(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skl2onnx")
    path = tmp_path / "digits.onnx"
    model_files.onnx_classifier(path)
    with pytest.raises(ModelLoadFailed, match="the model's outputs are label, probabilities"):
        load_model(str(path), output="scores")


@pytest.mark.parametrize("suffix", [".ubj", ".json"])
def test_xgboost_booster_file(tmp_path: Path, suffix: str) -> None:
    xgb = pytest.importorskip("xgboost")
    path = tmp_path / f"model{suffix}"
    booster = model_files.xgboost_classifier(path)
    assert runtime_for(str(path)) == "xgboost"
    proba_expected = booster.predict(xgb.DMatrix(np.stack(QUERIES)))
    model = load_model(str(path), native_threads=1)
    assert model.input_spec == TensorSpec("float32", (64,))  # type: ignore[attr-defined]
    labels = model.predict_batch(QUERIES)
    assert [int(v) for v in labels] == proba_expected.argmax(axis=1).tolist()
    proba = load_model(str(path), output="predict_proba").predict_batch(QUERIES)
    np.testing.assert_allclose(np.stack(proba), proba_expected, rtol=1e-6)
    margins = load_model(str(path), output="decision_function").predict_batch(QUERIES)
    assert np.stack(margins).shape == (len(QUERIES), 10)


def test_xgboost_regressor_answers_values_and_refuses_probabilities(tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    path = tmp_path / "reg.ubj"
    booster = model_files.xgboost_classifier(path, regression=True)
    values = load_model(str(path)).predict_batch(QUERIES)
    np.testing.assert_allclose(values, booster.predict(xgb.DMatrix(np.stack(QUERIES))))
    with pytest.raises(ModelLoadFailed, match="objective is reg:squarederror"):
        load_model(str(path), output="predict_proba")


def test_xgboost_raw_scores_give_labels_by_their_sign_and_no_probabilities(
        tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost")
    x, y = model_files.digits()
    odd = (y % 2).astype(int)
    booster = xgb.train({"objective": "binary:logitraw", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(x, label=odd), num_boost_round=8)
    path = tmp_path / "odd.ubj"
    booster.save_model(str(path))
    scores = booster.predict(xgb.DMatrix(np.stack(QUERIES)))
    assert (scores < 0).any() and (scores > 0).any()  # raw scores, not probabilities
    labels = load_model(str(path)).predict_batch(QUERIES)
    assert [int(v) for v in labels] == (scores > 0).astype(int).tolist()
    with pytest.raises(ModelLoadFailed, match="objective is binary:logitraw"):
        load_model(str(path), output="predict_proba")


@pytest.mark.parametrize("binary", [False, True])
def test_lightgbm_booster_file(tmp_path: Path, binary: bool) -> None:
    pytest.importorskip("lightgbm")
    path = tmp_path / "model.txt"
    booster = model_files.lightgbm_classifier(path, binary=binary)
    assert runtime_for(str(path)) == "lightgbm"
    expected = booster.predict(np.stack(QUERIES))
    labels = [int(v) for v in load_model(str(path), native_threads=1).predict_batch(QUERIES)]
    proba = np.stack(load_model(str(path), output="predict_proba").predict_batch(QUERIES))
    if binary:
        assert labels == (expected > 0.5).astype(int).tolist()
        np.testing.assert_allclose(proba[:, 1], expected)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    else:
        assert labels == expected.argmax(axis=1).tolist()
        np.testing.assert_allclose(proba, expected)


def test_lightgbm_regressor_answers_values(tmp_path: Path) -> None:
    pytest.importorskip("lightgbm")
    path = tmp_path / "reg.txt"
    booster = model_files.lightgbm_classifier(path, regression=True)
    values = load_model(str(path)).predict_batch(QUERIES)
    np.testing.assert_allclose(values, booster.predict(np.stack(QUERIES)))
    with pytest.raises(ModelLoadFailed, match="objective is regression"):
        load_model(str(path), output="predict_proba")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed, match=r"model file .*nope\.onnx does not exist"):
        load_model(str(tmp_path / "nope.onnx"))


async def test_a_worker_process_loads_the_runtime_and_reports_its_input(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skl2onnx")
    path = tmp_path / "digits.onnx"
    estimator = model_files.onnx_classifier(path)
    runner = ModelRunner(ModelSource(str(path), "onnx", "label"), "process")
    await runner.start()
    try:
        labels = await runner.run(QUERIES, timeout_s=30)
        assert runner.specs.input_spec == TensorSpec("float32", (64,))
    finally:
        await runner.aclose()
    assert [int(v) for v in labels] == estimator.predict(np.stack(QUERIES)).tolist()


@pytest.mark.parametrize(("runtime", "extra"), [("onnx", "onnx"), ("xgboost", "xgboost"),
                                                 ("lightgbm", "lightgbm")])
def test_the_container_names_the_missing_extra(tmp_path: Path, runtime: str,
                                               extra: str) -> None:
    """A container whose runtime is not installed exits at once, naming the extra."""
    module = {"onnx": "onnxruntime"}.get(runtime, runtime)
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    hide = (f"import sys, runpy; sys.modules[{module!r}] = None; "
            "runpy.run_module('services.model_container', run_name='__main__')")
    from services.common.credentials import container_token

    result = subprocess.run(
        [sys.executable, "-c", hide, "--model", str(path), "--runtime", runtime, "--name", "m"],
        capture_output=True, text=True, timeout=60,
        env={"CLIPPER_CONTAINER_TOKEN": container_token("a-mesh-secret-xyz", "m"),
             "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert f"pip install 'clipper-mesh[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr
