"""UCB1: the model with the highest upper confidence bound on its mean reward.

score(m) = mean(m) + c * sqrt(2 ln N / n(m)), N the answers counted over all
models; models never tried go first. With `decay` < 1 (default 0.99) each model's
counts are discounted per answer of its own, so its mean follows its recent
answers. Parameters: `c` (default 0.2, not the textbook 1), `decay`, and the change
detector's `change_threshold` and `change_delta` (base.ChangeDetector).
"""

from __future__ import annotations

import math
from typing import ClassVar

from services.policies.base import (
    ChangeDetector,
    Decision,
    Observation,
    SelectContext,
    State,
    record_outcome,
)
from services.policies.epsilon_greedy import DEFAULT_DECAY

# UCB1's c = 1 bounds rewards in [0, 1] loosely: with discounted counts its bonus never
# shrinks enough, and it kept 0.02-0.03 below the best model; 0.2 fits rewards whose
# spread between models is a few hundredths (benchmarks/selection_adapt.py).
DEFAULT_C = 0.2


class UCB1:
    name: ClassVar[str] = "ucb1"
    stateless: ClassVar[bool] = False

    def scores(self, ctx: SelectContext, state: State) -> dict[str, float]:
        c = ctx.float_param("c", DEFAULT_C, 0.0, 100.0)
        known = state.get("models", {})
        stats = {m: known.get(m, {"n": 0.0, "reward": 0.0}) for m in ctx.require_candidates()}
        total = sum(s["n"] for s in stats.values())
        scores: dict[str, float] = {}
        for model, s in stats.items():
            if s["n"] <= 1e-9:
                scores[model] = math.inf
            else:
                bonus = math.sqrt(2.0 * math.log(max(total, 1.0)) / s["n"])
                scores[model] = s["reward"] / s["n"] + c * bonus
        return scores

    def select(self, ctx: SelectContext, state: State) -> Decision:
        scores = self.scores(ctx, state)
        return [(max(scores, key=lambda m: scores[m]), 1.0)]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        return record_outcome(state, obs, ctx.float_param("decay", DEFAULT_DECAY, 0.0, 1.0),
                              ChangeDetector.from_params(ctx))
