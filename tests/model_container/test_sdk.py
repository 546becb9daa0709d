from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from services.model_container.sdk import (
    CallableModel,
    ModelLoadFailed,
    SklearnModel,
    as_model,
    load_model,
)


def test_callable_per_item_and_batched() -> None:
    inputs = [np.array([1.0, 2.0]), np.array([3.0, 4.0])]
    assert [o.tolist() for o in CallableModel(lambda x: x * 2).predict_batch(inputs)] == [
        [2.0, 4.0], [6.0, 8.0]
    ]
    batched = CallableModel(lambda xs: [x.sum() for x in xs], batched=True)
    assert batched.predict_batch(inputs) == [3.0, 7.0]


def test_sklearn_estimator_and_joblib_file(tmp_path: Path) -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    estimator = LogisticRegression().fit(x, y)
    path = tmp_path / "m.joblib"
    joblib.dump(estimator, path)
    inputs = [x[0], x[3]]
    assert list(SklearnModel(estimator).predict_batch(inputs)) == [0, 1]
    assert list(load_model(str(path)).predict_batch(inputs)) == [0, 1]
    assert isinstance(as_model(estimator), SklearnModel)


def test_load_importable_objects() -> None:
    assert load_model("tests.helpers.models:SumModel").predict_batch([np.ones(3)]) == [3.0]
    doubled = load_model("tests.helpers.models:double").predict_batch([np.ones(2)])
    assert doubled[0].tolist() == [2.0, 2.0]


def test_bad_references_say_what_was_expected() -> None:
    with pytest.raises(ModelLoadFailed, match=r"expected 'package\.module:attr'"):
        load_model("no_colon_here")
    with pytest.raises(TypeError, match="cannot serve int"):
        as_model(3)
