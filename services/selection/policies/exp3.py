"""Exp3: one model per query, drawn from weights learnt from feedback.

p(m) = (1 - gamma) * softmax(log_w)[m] + gamma / K. On feedback, a model that
answered loses eta * (1 - reward) / p(m) in log-weight (importance-weighted,
so that rarely drawn models are judged fairly); when several models answered
(feedback that re-ran every model) the losses are taken as they are.
Parameters: `eta` (learning rate, default 0.2), `gamma` (exploration, 0.1).
"""

from __future__ import annotations

import random
from typing import ClassVar

from services.selection.policies import log_weights
from services.selection.policies.base import (
    Decision,
    Observation,
    SelectContext,
    State,
    record_outcome,
    weighted_choice,
)


class Exp3:
    name: ClassVar[str] = "exp3"
    stateless: ClassVar[bool] = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def probabilities(self, ctx: SelectContext, state: State) -> dict[str, float]:
        candidates = ctx.require_candidates()
        gamma = ctx.float_param("gamma", 0.1, 0.0, 1.0)
        soft = log_weights.probabilities(state, candidates)
        return {m: (1 - gamma) * p + gamma / len(candidates) for m, p in soft.items()}

    def select(self, ctx: SelectContext, state: State) -> Decision:
        return [(weighted_choice(self.rng, self.probabilities(ctx, state)), 1.0)]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        eta = ctx.float_param("eta", 0.2, 0.0, 10.0)
        probs = self.probabilities(ctx, state) if ctx.candidates else {}
        one = len(obs.rewards) == 1
        losses = {
            m: (1.0 - r) / (probs.get(m, 1.0) if one else 1.0) for m, r in obs.rewards.items()
        }
        if losses:
            log_weights.penalize(state, ctx.candidates, losses, eta)
        return record_outcome(state, obs)
