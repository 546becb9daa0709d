"""Named tensors: names checked before anything else, and never an empty answer."""

from __future__ import annotations

import numpy as np
import pytest

from services.common import named_tensors
from services.common.errors import InvalidInput
from services.generated.clipper.v1 import clipper_pb2 as pb


def spec(name: str) -> pb.TensorSpec:
    return pb.TensorSpec(name=name, dtype="float32", shape=[2])


def test_names_that_could_forge_a_log_line_are_refused() -> None:
    assert [s.name for s in named_tensors.specs_from_proto(
        [spec("features"), spec("mask:v1")], "inputs")] == ["features", "mask:v1"]
    with pytest.raises(InvalidInput, match="letters, digits"):
        named_tensors.specs_from_proto([spec("a\n2026-11-30 INFO forged")], "inputs")


def test_too_many_specs_are_refused_before_any_is_read() -> None:
    many = [pb.TensorSpec(name=f"x{i}", dtype="nonsense") for i in range(100)]
    with pytest.raises(InvalidInput, match="100 inputs exceed the limit of 16"):
        named_tensors.specs_from_proto(many, "inputs")


def test_a_hostile_map_names_a_few_unknown_inputs_only() -> None:
    specs = named_tensors.specs_from_proto([spec("features")], "inputs")
    with pytest.raises(InvalidInput) as caught:
        named_tensors.check_names(specs, [f"junk{i}" for i in range(10_000)])
    assert caught.value.message.count("junk") == 4
    assert "missing input 'features'" in caught.value.message


def test_an_answer_without_any_named_output_is_refused() -> None:
    assert set(named_tensors.encode({"label": np.int64(3)}).tensors) == {"label"}
    with pytest.raises(InvalidInput, match="no named output"):
        named_tensors.encode({})
