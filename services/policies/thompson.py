"""Thompson sampling: draw each model's success rate from Beta(1 + rewards, 1 + misses).

The model with the highest draw answers. Parameters: `decay` (default 0.99), and the
change detector's `change_threshold` and `change_delta` (base.ChangeDetector).
"""

from __future__ import annotations

import random
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


class ThompsonSampling:
    name: ClassVar[str] = "thompson"
    stateless: ClassVar[bool] = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def select(self, ctx: SelectContext, state: State) -> Decision:
        known = state.get("models", {})
        draws: dict[str, float] = {}
        for model in ctx.require_candidates():
            s = known.get(model, {"n": 0.0, "reward": 0.0})
            wins, losses = s["reward"], max(s["n"] - s["reward"], 0.0)
            draws[model] = self.rng.betavariate(1.0 + wins, 1.0 + losses)
        return [(max(draws, key=lambda m: draws[m]), 1.0)]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        return record_outcome(state, obs, ctx.float_param("decay", DEFAULT_DECAY, 0.0, 1.0),
                              ChangeDetector.from_params(ctx))
