"""A model's answers against its declared outputs (services/model_container/answer_check)."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import ClipperError, InvalidInput
from services.common.tensors import TensorSpec
from services.model_container.answer_check import AnswerCheck

ONE = AnswerCheck(TensorSpec("float32", (3,)))
NAMED = AnswerCheck(outputs=(TensorSpec("int64", (), name="label"),
                             TensorSpec("float32", (-1,), name="probabilities")))


def test_nothing_declared_takes_any_answer() -> None:
    AnswerCheck().served({"anything": "at all"})
    AnswerCheck().served(np.zeros((2, 2)))


def test_one_declared_output() -> None:
    ONE.served(np.zeros(3, np.float32))
    with pytest.raises(ClipperError, match=r"declared outputs \(float32\[3\]\): expected "
                                           r"shape \[3\], got \[4\]"):
        ONE.served(np.zeros(4, np.float32))
    with pytest.raises(ClipperError, match="expected dtype float32, got float64"):
        ONE.served(np.zeros(3))
    with pytest.raises(ClipperError, match="expected one output, got a dict"):
        ONE.served({"x": np.zeros(3, np.float32)})


def test_scalars_numpy_or_plain() -> None:
    scalar = AnswerCheck(TensorSpec("float64", ()))
    scalar.served(np.float64(2.0))
    scalar.served(2.0)  # the full check takes what numpy makes of it
    with pytest.raises(ClipperError, match="expected dtype float64, got int64"):
        scalar.served(np.int64(2))


def test_named_outputs() -> None:
    NAMED.served({"label": np.int64(2), "probabilities": np.zeros(10, np.float32)})
    with pytest.raises(InvalidInput, match="expected a dict of named outputs, got ndarray"):
        NAMED.check(np.zeros(3))
    with pytest.raises(ClipperError, match="probabilities"):
        NAMED.served({"label": np.int64(2)})
    with pytest.raises(ClipperError, match="expected dtype int64, got float64"):
        NAMED.served({"label": 2.0, "probabilities": np.zeros(10, np.float32)})


def test_the_error_is_the_models_fault_not_the_clients() -> None:
    with pytest.raises(ClipperError) as raised:
        ONE.served(np.zeros(4, np.float32))
    assert not isinstance(raised.value, InvalidInput)  # INTERNAL, not INVALID_ARGUMENT
