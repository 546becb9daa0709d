"""Small real model files of each runtime, made at test time from the digits data set
(scikit-learn ships it: nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def digits(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """(x float32[n, 64], y int64[n]) from scikit-learn's bundled digits."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:n].astype(np.float32), y[:n].astype(np.int64)


def logreg() -> Any:
    """A fitted scaler + logistic regression pipeline on the digits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = digits()
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)


def onnx_classifier(path: Path, batch: int | None = None) -> Any:
    """The logreg pipeline as ONNX (outputs `label` int64 and `probabilities` float32,
    no zipmap); `batch` fixes the first dimension (None: dynamic). Returns the estimator."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    estimator = logreg()
    onx = to_onnx(estimator, initial_types=[("input", FloatTensorType([batch, 64]))],
                  options={"zipmap": False}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return estimator


def xgboost_classifier(path: Path, regression: bool = False) -> Any:
    """An XGBoost booster on the digits (10 classes, or the digit as a value) saved to
    `path` (.ubj or .json). Returns the booster."""
    import xgboost as xgb

    x, y = digits()
    model = (xgb.XGBRegressor if regression else xgb.XGBClassifier)(
        n_estimators=8, max_depth=3, n_jobs=1)
    booster = model.fit(x, y).get_booster()
    booster.save_model(str(path))
    return booster


def lightgbm_classifier(path: Path, regression: bool = False, binary: bool = False) -> Any:
    """A LightGBM booster on the digits (10 classes, odd/even, or the digit as a value)
    saved to `path`. Returns the booster."""
    import lightgbm as lgb

    x, y = digits()
    if regression:
        model: Any = lgb.LGBMRegressor(n_estimators=8, verbose=-1, n_jobs=1)
    else:
        model = lgb.LGBMClassifier(n_estimators=8, verbose=-1, n_jobs=1)
    booster = model.fit(x, y % 2 if binary else y).booster_
    booster.save_model(str(path))
    return booster


# Weights of `onnx_masked` (features [4] -> 3 classes).
MASKED_WEIGHTS = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [-1.0, 0.5, 2.0],
                           [2.0, 0.0, -0.5]], dtype=np.float32)
MASKED_BIAS = np.array([0.1, -0.2, 0.0], dtype=np.float32)


def onnx_masked(path: Path) -> None:
    """An ONNX model of two inputs and two outputs, built with onnx's helper API:
    `features` float32[N, 4] and `mask` bool[N, 4] in; the masked features' scores
    x W + b give `label` int64[N] (argmax) and `probabilities` float32[N, 3] (softmax).
    `masked_reference` computes the same in numpy."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["features", "mask_f"], ["masked"]),
         helper.make_node("MatMul", ["masked", "W"], ["product"]),
         helper.make_node("Add", ["product", "b"], ["scores"]),
         helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
         helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)],
        "masked",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(MASKED_WEIGHTS, "W"), numpy_helper.from_array(MASKED_BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def masked_reference(features: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, probabilities) of `onnx_masked` for one query or a batch, in numpy."""
    scores = (features * mask).astype(np.float32) @ MASKED_WEIGHTS + MASKED_BIAS
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return scores.argmax(axis=-1).astype(np.int64), (exp / exp.sum(axis=-1, keepdims=True))
