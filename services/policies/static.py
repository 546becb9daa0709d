"""One fixed model: `policy_params["model"]`, else the first linked model."""

from __future__ import annotations

from typing import ClassVar

from services.common.errors import InvalidInput
from services.policies.base import (
    Decision,
    Observation,
    SelectContext,
    State,
    record_outcome,
)


class StaticModel:
    name: ClassVar[str] = "static"
    stateless: ClassVar[bool] = True

    def select(self, ctx: SelectContext, state: State) -> Decision:
        model = ctx.params.get("model") or ctx.require_candidates()[0]
        if model not in ctx.candidates:
            raise InvalidInput(
                f"static policy model {model!r} is not linked to {ctx.application!r}"
            )
        return [(model, 1.0)]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        return record_outcome(state, obs)
