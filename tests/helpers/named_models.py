"""Test models of named inputs and outputs (`--model tests.helpers.named_models:X`).

Each takes `features` float32[4] and `mask` bool[4] and answers `label` (int64),
`probabilities` (float32[3]) and `masked_sum` (the sum of the masked features, so
that the inputs' names show); the three heads below disagree on purpose, so that an
ensemble of them shows each output combined by its own rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.tensors import TensorSpec

INPUTS = (TensorSpec("float32", (4,), "features"), TensorSpec("bool", (4,), "mask"))
OUTPUTS = (TensorSpec("int64", (), "label"), TensorSpec("float32", (3,), "probabilities"),
           TensorSpec("float64", (), "masked_sum"))
# What each head answers whatever the query: (label, probabilities).
ANSWERS = {
    "HeadA": (1, [0.2, 0.7, 0.1]),
    "HeadB": (1, [0.3, 0.5, 0.2]),
    "HeadC": (2, [0.1, 0.3, 0.6]),
}


class _Head:
    inputs = INPUTS
    outputs = OUTPUTS

    def predict_batch(self, inputs: list[dict[str, np.ndarray]]) -> Sequence[Any]:
        label, probabilities = ANSWERS[type(self).__name__]
        answers = []
        for query in inputs:
            # The answer depends on both inputs: a mixed-up name would show.
            masked = float((query["features"] * query["mask"]).sum())
            answers.append({"label": np.int64(label),
                            "probabilities": np.array(probabilities, dtype=np.float32),
                            "masked_sum": np.float64(masked)})
        return answers


class HeadA(_Head):
    pass


class HeadB(_Head):
    pass


class HeadC(_Head):
    pass
