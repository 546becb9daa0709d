import numpy as np
import pytest

from services.common import tensors
from services.common.tensors import TensorSpec
from services.frontend.combine import Answer, combine, weighted_vote


def answer(model: str, value: int, weight: float = 1.0) -> Answer:
    return Answer(model, f"{model}:1", tensors.encode(np.int64(value)), weight)


def test_majority_wins_with_its_share_as_confidence() -> None:
    combined = weighted_vote([answer("a", 3), answer("b", 5), answer("c", 3)])
    assert tensors.decode(combined.output).item() == 3
    assert combined.confidence == pytest.approx(2 / 3)


def test_weights_beat_counts() -> None:
    combined = weighted_vote([answer("a", 3, 0.2), answer("b", 3, 0.2), answer("c", 5, 0.6)])
    assert tensors.decode(combined.output).item() == 5
    assert combined.confidence == pytest.approx(0.6)


def test_ties_go_to_the_policy_order() -> None:
    assert tensors.decode(weighted_vote([answer("a", 9), answer("b", 4)]).output).item() == 9


def test_nothing_to_combine() -> None:
    with pytest.raises(ValueError):
        combine([])


def number(model: str, value: list[float], weight: float = 1.0) -> Answer:
    return Answer(model, f"{model}:1", tensors.encode(np.array(value, np.float32)), weight)


def test_numbers_take_the_weighted_mean_of_what_arrived() -> None:
    combined = combine([number("a", [1.0, 10.0], 3.0), number("b", [5.0, 30.0], 1.0)])
    out = tensors.decode(combined.output)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [2.0, 15.0])
    # |1-2|*.75 + |5-2|*.25 = 1.5 and |10-15|*.75 + |30-15|*.25 = 7.5: mean 4.5 over 8.5
    assert combined.confidence == pytest.approx(1 - 4.5 / 8.5)
    agree = combine([number("a", [2.0], 0.5), number("b", [2.0], 0.5)])
    assert agree.confidence == pytest.approx(1.0)


def test_classes_and_mixed_shapes_vote() -> None:
    assert tensors.decode(combine([answer("a", 3), answer("b", 3)]).output).item() == 3
    mixed = combine([number("a", [1.0]), number("b", [1.0, 2.0]), number("c", [1.0])])
    np.testing.assert_allclose(tensors.decode(mixed.output), [1.0])
    assert mixed.confidence == pytest.approx(2 / 3)


def two_heads(model: str, label: int, probabilities: list[float],
              weight: float = 1.0) -> Answer:
    return Answer(model, f"{model}:1", {
        "label": tensors.encode(np.int64(label)),
        "probabilities": tensors.encode(np.array(probabilities, np.float32))}, weight)


def test_named_outputs_combine_one_by_one_each_by_its_rule() -> None:
    combined = combine([two_heads("a", 1, [0.2, 0.8]), two_heads("b", 1, [0.4, 0.6]),
                        two_heads("c", 0, [0.9, 0.1])])
    assert isinstance(combined.output, dict)
    assert tensors.decode(combined.output["label"]).item() == 1
    np.testing.assert_allclose(tensors.decode(combined.output["probabilities"]), [0.5, 0.5],
                               rtol=1e-6)
    assert combined.confidence == pytest.approx(2 / 3)  # the first output by name: label


def test_the_declared_first_output_gives_the_confidence() -> None:
    answers = [two_heads("a", 1, [0.5, 0.5]), two_heads("b", 0, [0.5, 0.5])]
    order = (TensorSpec("float32", (2,), "probabilities"), TensorSpec("int64", (), "label"))
    assert combine(answers, order).confidence == pytest.approx(1.0)
    assert combine(answers).confidence == pytest.approx(0.5)
