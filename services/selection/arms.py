"""A model's version is part of its arm: learning policies learn per (model, version).

The frontend says which version of each linked model a query is answered by
(the active one, or the version the query pins), and for feedback which
version gave each answer. A learning policy sees arms named `model:version`
(names hold no `:`, so an arm never collides with a model name) instead of
models, so that:

- a new version starts from a fresh prior (for Exp3/Exp4, level with the best
  arm; for the mean-based policies, untried), or in a context's state from the
  application-wide record of that version, and is judged on its own answers;
- a rollback finds the old version's record where it was left.

The state keeps at most `versions_kept` arms per model: the versions being
served now, then those that were served most recently (`seen`, the round an
arm was last a candidate). Without a version (an older frontend) the arm is
the model's name. Stateless policies (static, all, ab) see models as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from services.policies.base import (
    Decision,
    Observation,
    Policy,
    SelectContext,
    State,
)

SEPARATOR = ":"
DEFAULT_VERSIONS_KEPT = 4


def arm(model: str, version: str) -> str:
    return f"{model}{SEPARATOR}{version}" if version else model


def model_of(arm_name: str) -> str:
    return arm_name.partition(SEPARATOR)[0]


def arms_of(ctx: SelectContext) -> dict[str, str]:
    """model -> arm for each candidate, in the candidates' order."""
    return {m: arm(m, ctx.versions.get(m, "")) for m in ctx.candidates}


def _arm_context(ctx: SelectContext, arms: Mapping[str, str]) -> SelectContext:
    return SelectContext(ctx.application, ctx.context_key, tuple(arms.values()), ctx.params)


def decide(policy: Policy, ctx: SelectContext, state: State) -> Decision:
    """The policy's decision for the query, in models."""
    if policy.stateless:
        return policy.select(ctx, state)
    ctx.require_candidates()
    arms = arms_of(ctx)
    decision = policy.select(_arm_context(ctx, arms), state)
    return [(model_of(a), w) for a, w in decision]


def learn(policy: Policy, ctx: SelectContext, state: State, obs: Observation,
          versions_kept: int = DEFAULT_VERSIONS_KEPT) -> State:
    """Fold the observation into the state, each answer credited to the version that gave it."""
    if policy.stateless:
        return policy.observe(ctx, state, obs)
    arms = arms_of(ctx)
    answered = {m: arms.get(m) or arm(m, ctx.versions.get(m, "")) for m in obs.rewards}
    arm_obs = Observation({answered[m]: r for m, r in obs.rewards.items()},
                          {answered[m]: w for m, w in obs.weights.items() if m in answered})
    state = policy.observe(_arm_context(ctx, arms), state, arm_obs)
    rounds = int(state.get("rounds", 0))
    known = state.get("models", {})
    for name in (*arms.values(), *answered.values()):
        if name in known:
            known[name]["seen"] = rounds
    prune(state, set(arms.values()), versions_kept)
    return state


def seed(state: State, app_wide: State, ctx: SelectContext) -> State:
    """A context's state, with each candidate arm it has never seen taken from the
    application-wide state (so a version the application already judged is not new here)."""
    theirs = app_wide.get("models", {})
    missing = [a for a in unseen(state, ctx) if a in theirs]
    if not missing:
        return state
    state = copy.deepcopy(state)
    models = state.setdefault("models", {})
    for name in missing:
        models[name] = copy.deepcopy(theirs[name])
    return state


def unseen(state: State, ctx: SelectContext) -> list[str]:
    """The candidates' arms the state has no record of."""
    known = state.get("models", {})
    return [a for a in arms_of(ctx).values() if a not in known]


def prune(state: State, current: set[str], versions_kept: int) -> None:
    """Keep at most `versions_kept` arms per model: the current ones, then the most
    recently seen."""
    known: dict[str, dict[str, float]] = state.get("models", {})
    by_model: dict[str, list[str]] = {}
    for name in known:
        by_model.setdefault(model_of(name), []).append(name)
    for names in by_model.values():
        if len(names) <= versions_kept:
            continue
        names.sort(key=lambda a: (a in current, known[a].get("seen", 0.0)), reverse=True)
        for name in names[versions_kept:]:
            del known[name]
