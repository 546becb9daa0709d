"""Every linked model answers; the frontend takes the majority (equal weights)."""

from __future__ import annotations

from typing import ClassVar

from services.common.errors import InvalidInput
from services.selection.policies.base import Observation, SelectContext, State, record_outcome


class AllModels:
    name: ClassVar[str] = "all"
    # Decides without learnt state: the frontend may evaluate it itself.
    stateless: ClassVar[bool] = True

    def select(self, ctx: SelectContext, state: State) -> list[tuple[str, float]]:
        if not ctx.candidates:
            raise InvalidInput(f"application {ctx.application!r} has no linked model")
        return [(model, 1.0) for model in ctx.candidates]

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State:
        return record_outcome(state, obs)
