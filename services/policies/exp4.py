"""Exp4: every linked model answers; the ensemble weighs them by weights learnt from feedback.

Weights are softmax(log_w); on feedback every model that answered loses
eta * (1 - reward) in log-weight. The frontend combines the answers by these
weights, and the confidence is the share of the weight that agrees with the
answer. Parameters: `eta` (learning rate, default 0.2) and `max_ratio`
(log_weights.MAX_RATIO).
"""

from __future__ import annotations

from typing import ClassVar

from services.policies import log_weights
from services.policies.base import (
    Decision,
    Observation,
    SelectContext,
    State,
    record_outcome,
)


class Exp4:
    name: ClassVar[str] = "exp4"
    stateless: ClassVar[bool] = False

    def select(self, ctx: SelectContext, state: State) -> Decision:
        probs = log_weights.probabilities(state, ctx.require_candidates())
        return [(m, probs[m]) for m in ctx.candidates]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        eta = ctx.float_param("eta", 0.2, 0.0, 10.0)
        if obs.rewards:
            losses = {m: 1.0 - r for m, r in obs.rewards.items()}
            log_weights.penalize(state, ctx.candidates, losses, eta,
                                  ctx.float_param("max_ratio", log_weights.MAX_RATIO, 1.0, 1e12))
        return record_outcome(state, obs)
