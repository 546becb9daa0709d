"""Weighted A/B split (canary percentages): one model per query, drawn by fixed weights.

Weights come from `policy_params["weight.<model>"]` (any non-negative numbers,
e.g. `weight.v2=5` and `weight.v1=95`); linked models without a weight get none,
and with no weights at all every linked model gets an equal share. A query with
a context key always goes to the same model (a stable hash of the key), so a
user sees one variant; a query without one is drawn at random.
"""

from __future__ import annotations

import hashlib
import random
from typing import ClassVar

from services.common.errors import InvalidInput
from services.policies.base import (
    Decision,
    Observation,
    SelectContext,
    State,
    record_outcome,
)

WEIGHT_PREFIX = "weight."


class WeightedSplit:
    name: ClassVar[str] = "ab"
    stateless: ClassVar[bool] = True

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def select(self, ctx: SelectContext, state: State) -> Decision:
        weights = split_weights(ctx)
        total = sum(weights.values())
        point = _stable_point(ctx) if ctx.context_key else self.rng.random()
        cumulative = 0.0
        for model, weight in weights.items():
            cumulative += weight / total
            if point < cumulative:
                return [(model, 1.0)]
        return [(next(m for m in reversed(weights) if weights[m] > 0), 1.0)]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        return record_outcome(state, obs)


def split_weights(ctx: SelectContext) -> dict[str, float]:
    candidates = ctx.require_candidates()
    given = [k[len(WEIGHT_PREFIX):] for k in ctx.params if k.startswith(WEIGHT_PREFIX)]
    for model in given:
        if model not in candidates:
            raise InvalidInput(f"ab policy weight for {model!r}, which is not linked")
    if not given:
        return {m: 1.0 for m in candidates}
    weights = {m: ctx.float_param(WEIGHT_PREFIX + m, 0.0, 0.0, 1e12) for m in candidates}
    if sum(weights.values()) <= 0:
        raise InvalidInput("ab policy weights must not all be zero")
    return weights


def _stable_point(ctx: SelectContext) -> float:
    digest = hashlib.sha256(f"{ctx.application}\0{ctx.context_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
