"""What every selection policy implements, and the per-model statistics they share.

A policy is code; its state for one (application, context key) is a JSON-able
dict that the service loads from and saves to the state store. Policies whose
decision needs no state (`stateless`) are also evaluated by the frontend itself.
`select` returns the models to ask with their weights (the frontend combines
the answers by weighted vote or weighted mean); `observe` folds one labelled
outcome into the state and returns it.

State layout shared by every policy: `{"models": {name: {"n": float,
"reward": float, ...policy fields}}, "rounds": int}`. Counts may be
discounted (`decay` < 1) so that a policy keeps up with a model that changes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from services.common.errors import InvalidInput

State = dict[str, Any]
# Page-Hinkley defaults (ChangeDetector): a model right ~95% of the time that turns wrong
# is caught after ~6 wrong answers; the noise of a model right 65% of the time gets there
# about once in a hundred excursions, and a false alarm costs only a few answers to
# re-learn the model's mean (benchmarks/selection_adapt.py).
DEFAULT_CHANGE_THRESHOLD = 5.0
DEFAULT_CHANGE_DELTA = 0.1
Decision = list[tuple[str, float]]


@dataclass(frozen=True)
class SelectContext:
    application: str
    context_key: str
    candidates: tuple[str, ...]
    params: Mapping[str, str]
    # The version each candidate answers with (services/selection/arms.py); may be empty.
    versions: Mapping[str, str] = field(default_factory=dict)

    def require_candidates(self) -> tuple[str, ...]:
        if not self.candidates:
            raise InvalidInput(f"application {self.application!r} has no linked model")
        return self.candidates

    def float_param(self, name: str, default: float, low: float, high: float) -> float:
        """A numeric policy parameter, checked to lie in [low, high]."""
        raw = self.params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInput(f"policy parameter {name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise InvalidInput(f"policy parameter {name}={value} must be in [{low}, {high}]")
        return value


@dataclass(frozen=True)
class Observation:
    """The reward in [0, 1] of each model that answered the query the label is for.

    Models that did not answer (late, failed) are absent: they are neither
    rewarded nor punished. `weights` are those `select` decided the query with
    (for policies that draw one model, its probability); empty when the models
    were asked again for the feedback.
    """

    rewards: Mapping[str, float]
    weights: Mapping[str, float] = field(default_factory=dict)


class Policy(Protocol):
    name: ClassVar[str]
    # True when `select` ignores the state: then the frontend evaluates the policy
    # itself and saves a round trip to the selection service on every query.
    stateless: ClassVar[bool]

    def select(self, ctx: SelectContext, state: State) -> Decision: ...

    def observe(self, ctx: SelectContext, state: State, obs: Observation) -> State: ...


def model_stats(state: State, model: str) -> dict[str, float]:
    """The model's entry in the state, created empty on first use."""
    models: dict[str, dict[str, float]] = state.setdefault("models", {})
    return models.setdefault(model, {"n": 0.0, "reward": 0.0})


def record_outcome(state: State, obs: Observation, decay: float = 1.0,
                   change: ChangeDetector | None = None,
                   changed: list[str] | None = None) -> State:
    """Count answers and rewards per model; each model's older answers are discounted by
    `decay` per answer of its own (an exponentially weighted mean over its last
    ~1 / (1 - decay) answers), so a model not asked keeps its record. With `change`,
    a model whose reward drops is judged on its answers since the drop alone, and is
    appended to `changed` when given."""
    for model, value in obs.rewards.items():
        stats = model_stats(state, model)
        if change is not None and change.update(stats, value) and changed is not None:
            changed.append(model)
        stats["n"] = stats["n"] * decay + 1.0
        stats["reward"] = stats["reward"] * decay + value
    state["rounds"] = int(state.get("rounds", 0)) + 1
    return state


@dataclass(frozen=True)
class ChangeDetector:
    """Page-Hinkley test for a drop in one model's reward.

    g = max(0, g + mean - reward - delta), with `mean` the model's (discounted) mean
    before the answer: g grows while answers fall short of the record by more than
    `delta`, and returns to 0 while they do not. When g exceeds `threshold`, the model's
    record is replaced by its answers since g last left 0 (the estimated change point),
    so a model whose answers turned wrong is judged on those at once, instead of after
    the ~1 / (1 - decay) answers its discounted mean needs. Only drops are tested: a
    model that improves is found by the policy's exploration.
    """

    threshold: float
    delta: float

    @classmethod
    def from_params(cls, ctx: SelectContext) -> ChangeDetector | None:
        threshold = ctx.float_param("change_threshold", DEFAULT_CHANGE_THRESHOLD, 0.0, 1e6)
        delta = ctx.float_param("change_delta", DEFAULT_CHANGE_DELTA, 0.0, 1.0)
        return cls(threshold, delta) if threshold > 0 else None

    def update(self, stats: dict[str, float], value: float) -> bool:
        """Fold one reward in; True when it revealed a drop."""
        if stats["n"] <= 0:
            return False
        g = max(0.0, stats.get("ph", 0.0) + stats["reward"] / stats["n"] - value - self.delta)
        if g <= 0:
            stats.update(ph=0.0, ph_n=0.0, ph_r=0.0)
            return False
        if g > self.threshold:  # changed: keep only what came since
            stats.update(n=stats.get("ph_n", 0.0), reward=stats.get("ph_r", 0.0),
                         ph=0.0, ph_n=0.0, ph_r=0.0)
            return True
        stats.update(ph=g, ph_n=stats.get("ph_n", 0.0) + 1.0,
                     ph_r=stats.get("ph_r", 0.0) + value)
        return False


def mean_reward(state: State, model: str) -> float | None:
    stats = state.get("models", {}).get(model)
    if not stats or stats["n"] <= 0:
        return None
    return float(stats["reward"] / stats["n"])


def weighted_choice(rng: random.Random, weights: Mapping[str, float]) -> str:
    models = list(weights)
    return rng.choices(models, weights=[max(weights[m], 0.0) for m in models])[0]
