"""Every linked model answers with equal weight: a plain majority vote (or mean)."""

from __future__ import annotations

from typing import ClassVar

from services.policies.base import (
    Decision,
    Observation,
    SelectContext,
    State,
    record_outcome,
)


class AllModels:
    name: ClassVar[str] = "all"
    stateless: ClassVar[bool] = True

    def select(self, ctx: SelectContext, state: State) -> Decision:
        return [(model, 1.0) for model in ctx.require_candidates()]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        return record_outcome(state, obs)
