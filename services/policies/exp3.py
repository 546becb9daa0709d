"""Exp3: one model per query, drawn from weights learnt from feedback.

p(m) = (1 - gamma) * softmax(log_w)[m] + gamma / K; the decision's weight is
p(m), which comes back with the feedback. On feedback, a model that answered
loses eta * (1 - reward) / p(m) in log-weight (importance-weighted, so that
rarely drawn models are judged fairly), with p(m) as it was drawn; when several
models answered (feedback that re-ran every model) the losses are taken as
they are.
Parameters: `eta` (learning rate, default 0.3), `gamma` (exploration, default 0.02:
the textbook 0.1 spends a tenth of the queries on a uniform draw, bad builds
included) and `max_ratio` (log_weights.MAX_RATIO).
"""

from __future__ import annotations

import random
from typing import ClassVar

from services.policies import log_weights
from services.policies.base import (
    ChangeDetector,
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
        gamma = ctx.float_param("gamma", 0.02, 0.0, 1.0)
        soft = log_weights.probabilities(state, candidates)
        return {m: (1 - gamma) * p + gamma / len(candidates) for m, p in soft.items()}

    def select(self, ctx: SelectContext, state: State) -> Decision:
        probs = self.probabilities(ctx, state)
        model = weighted_choice(self.rng, probs)
        return [(model, probs[model])]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        eta = ctx.float_param("eta", 0.3, 0.0, 10.0)
        if len(obs.rewards) == 1:
            (model, value), = obs.rewards.items()
            drawn = obs.weights.get(model) or self.probabilities(ctx, state).get(model, 1.0)
            losses = {model: (1.0 - value) / drawn}
        else:
            losses = {m: 1.0 - r for m, r in obs.rewards.items()}
        max_ratio = ctx.float_param("max_ratio", log_weights.MAX_RATIO, 1.0, 1e12)
        if losses:
            log_weights.penalize(state, ctx.candidates, losses, eta, max_ratio)
        dropped: list[str] = []
        record_outcome(state, obs, change=ChangeDetector.from_params(ctx), changed=dropped)
        log_weights.demote(state, ctx.candidates, dropped, max_ratio)
        return state
