"""Combining the answers of several models into one.

Classes (integers, booleans, strings, bytes) are combined by weighted vote;
numbers (floating point) by weighted mean. Only the answers that arrived count:
their weights are renormalised, so a missing model is neither a vote against
the answer nor a zero in the mean.

Named outputs are combined one by one, each by its own rule: a label output
(int64) by vote, a probabilities output (float32) by mean. The confidence is the
first output's (the application's first declared output, else the first name).
Answers of one tensor and named answers do not mix: the kind of the first answer
(the policy's order) counts, the others are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common import named_tensors, tensors
from services.common.named_tensors import Value
from services.common.tensors import TensorSpec
from services.generated.clipper.v1 import clipper_pb2 as pb

FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})


@dataclass(frozen=True)
class Answer:
    model: str  # the name the policy chose
    served_by: str  # "name:version"
    output: Value
    weight: float


@dataclass(frozen=True)
class Combined:
    output: Value
    confidence: float


def combine(answers: Sequence[Answer], order: Sequence[TensorSpec] = ()) -> Combined:
    """One tensor: see `combine_one`. Named outputs: each name over the answers that
    have it; the confidence is that of the first (by `order`, else by name)."""
    if not answers:
        raise ValueError("no answers to combine")
    if isinstance(answers[0].output, pb.Tensor):
        return combine_one([a for a in answers if isinstance(a.output, pb.Tensor)])
    named = [(a, a.output) for a in answers if not isinstance(a.output, pb.Tensor)]
    names = list(dict.fromkeys(n for _, output in named for n in sorted(output)))
    outputs: dict[str, pb.Tensor] = {}
    confidences: dict[str, float] = {}
    for name in names:
        per_name = [Answer(a.model, a.served_by, output[name], a.weight)
                    for a, output in named if name in output]
        combined = combine_one(per_name)
        assert isinstance(combined.output, pb.Tensor)
        outputs[name], confidences[name] = combined.output, combined.confidence
    return Combined(outputs, confidences[named_tensors.first_name(outputs, order)])


def combine_one(answers: Sequence[Answer]) -> Combined:
    """Weighted mean when every answer is a float tensor of one shape, else weighted vote."""
    first = answers[0].output
    assert isinstance(first, pb.Tensor)
    numeric = first.dtype in FLOAT_DTYPES and all(
        isinstance(a.output, pb.Tensor) and a.output.dtype == first.dtype
        and list(a.output.shape) == list(first.shape)
        for a in answers
    )
    return weighted_mean(answers) if numeric and len(answers) > 1 else weighted_vote(answers)


def weighted_vote(answers: Sequence[Answer]) -> Combined:
    """The output with the most weight among those that arrived.

    Ties go to the answer seen first, which is the policy's order. Confidence is
    the share of the arrived weight that agrees with the winner.
    """
    totals: dict[bytes, float] = {}
    first: dict[bytes, Value] = {}
    for answer in answers:
        assert isinstance(answer.output, pb.Tensor)
        key = tensors.tensor_key(answer.output)
        totals[key] = totals.get(key, 0.0) + max(answer.weight, 0.0)
        first.setdefault(key, answer.output)
    winner = max(totals, key=lambda k: totals[k])  # max keeps the first of equals
    total = sum(totals.values())
    confidence = totals[winner] / total if total > 0 else 1.0 / len(totals)
    return Combined(first[winner], confidence)


def weighted_mean(answers: Sequence[Answer]) -> Combined:
    """The weighted mean of the answers, in their dtype.

    Confidence is 1 minus the weighted mean absolute deviation from the mean,
    relative to the mean's magnitude (clipped to 0..1): models that agree give 1.
    """
    outputs = [a.output for a in answers if isinstance(a.output, pb.Tensor)]
    values = np.stack([tensors.decode(o).astype(np.float64) for o in outputs])
    weights = np.array([max(a.weight, 0.0) for a in answers], dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    weights /= weights.sum()
    mean = np.tensordot(weights, values, axes=1)
    deviation = float(np.tensordot(weights, np.abs(values - mean), axes=1).mean())
    scale = float(np.abs(mean).mean()) + 1e-9
    confidence = float(np.clip(1.0 - deviation / scale, 0.0, 1.0))
    if math.isnan(confidence):  # a model answered NaN or infinity: no agreement to speak of
        confidence = 0.0
    output = tensors.encode(mean.astype(tensors.decode(outputs[0]).dtype))
    return Combined(output, confidence)
