import numpy as np
import pytest

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.selection.reward import reward


def t(value: object, dtype: str | None = None) -> pb.Tensor:
    return tensors.encode(np.asarray(value, dtype=dtype))


def test_classes_score_exact_matches() -> None:
    assert reward(t(3, "int64"), t(3, "int64")) == 1.0
    assert reward(t(3, "int64"), t(4, "int64")) == 0.0
    assert reward(t(3, "int32"), t(3, "int64")) == 1.0  # same value, other width
    assert reward(t([1, 2], "int64"), t([1], "int64")) == 0.0  # size differs


def test_numbers_score_by_relative_error() -> None:
    assert reward(t(10.0, "float32"), t(10.0, "float32")) == 1.0
    assert reward(t(9.0, "float64"), t(10.0, "float64")) == pytest.approx(0.9)
    assert reward(t(30.0, "float64"), t(10.0, "float64")) == 0.0


def test_strings_compare_exactly() -> None:
    assert reward(tensors.encode("cat"), tensors.encode("cat")) == 1.0
    assert reward(tensors.encode("cat"), tensors.encode("dog")) == 0.0
