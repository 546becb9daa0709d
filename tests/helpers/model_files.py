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
