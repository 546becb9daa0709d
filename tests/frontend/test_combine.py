import numpy as np
import pytest

from services.common import tensors
from services.frontend.combine import Answer, weighted_vote


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
        weighted_vote([])
