"""Combining the answers of several models into one.

Classes (integers, booleans, strings, bytes) are combined by weighted vote;
numbers (floating point) by weighted mean. Only the answers that arrived count:
their weights are renormalised, so a missing model is neither a vote against
the answer nor a zero in the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb

FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})


@dataclass(frozen=True)
class Answer:
    model: str  # the name the policy chose
    served_by: str  # "name:version"
    output: pb.Tensor
    weight: float


@dataclass(frozen=True)
class Combined:
    output: pb.Tensor
    confidence: float


def combine(answers: Sequence[Answer]) -> Combined:
    """Weighted mean when every answer is a float tensor of one shape, else weighted vote."""
    if not answers:
        raise ValueError("no answers to combine")
    first = answers[0].output
    numeric = first.dtype in FLOAT_DTYPES and all(
        a.output.dtype == first.dtype and list(a.output.shape) == list(first.shape)
        for a in answers
    )
    return weighted_mean(answers) if numeric and len(answers) > 1 else weighted_vote(answers)


def weighted_vote(answers: Sequence[Answer]) -> Combined:
    """The output with the most weight among those that arrived.

    Ties go to the answer seen first, which is the policy's order. Confidence is
    the share of the arrived weight that agrees with the winner.
    """
    totals: dict[bytes, float] = {}
    first: dict[bytes, pb.Tensor] = {}
    for answer in answers:
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
    values = np.stack([tensors.decode(a.output).astype(np.float64) for a in answers])
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
    output = tensors.encode(mean.astype(tensors.decode(answers[0].output).dtype))
    return Combined(output, confidence)
