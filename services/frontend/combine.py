"""Combining the answers of several models into one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb


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


def weighted_vote(answers: Sequence[Answer]) -> Combined:
    """The output with the most weight among those that arrived (weights renormalised).

    Ties go to the answer seen first, which is the policy's order. Confidence is
    the share of the arrived weight that agrees with the winner.
    """
    if not answers:
        raise ValueError("no answers to combine")
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
