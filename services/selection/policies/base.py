"""What every selection policy implements.

A policy is code; its state for one (application, context key) is a JSON-able
dict that the service loads from and saves to the state store. Policies whose
decision needs no state (`stateless`) are also evaluated by the frontend itself.
`select` returns the models to ask with their weights (the frontend combines
answers by weighted vote); `observe` folds one labelled outcome into the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

State = dict[str, Any]


@dataclass(frozen=True)
class SelectContext:
    application: str
    context_key: str
    candidates: tuple[str, ...]
    params: Mapping[str, str]


@dataclass(frozen=True)
class Observation:
    """Each model's answer (as a canonical byte key) and whether it matched the label."""

    outputs: Mapping[str, bytes]
    label: bytes

    def correct(self, model: str) -> bool:
        return self.outputs.get(model) == self.label


class Policy(Protocol):
    name: ClassVar[str]
    # True when `select` ignores the state: then the frontend evaluates the policy
    # itself and saves a round trip to the selection service on every query.
    stateless: ClassVar[bool]

    def select(self, ctx: SelectContext, state: State) -> list[tuple[str, float]]: ...

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State: ...


def record_outcome(state: State, obs: Observation) -> State:
    """Count answers and correct answers per model: `state["models"][m] = {n, correct}`."""
    models = state.setdefault("models", {})
    for model in obs.outputs:
        stats = models.setdefault(model, {"n": 0, "correct": 0})
        stats["n"] += 1
        stats["correct"] += int(obs.correct(model))
    return state
