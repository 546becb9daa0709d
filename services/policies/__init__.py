"""Selection policies by name: the code both sides of the selection contract run.

The frontend evaluates the stateless policies itself (no round trip per query) and
checks an application's policy and parameters when it is created or updated
(`check`); the selection service runs the learning policies and keeps their state.
Neither has its own copy of a policy's rules. A new policy is one module plus one
entry in POLICIES.
"""

from __future__ import annotations

import dataclasses

from services.common.errors import InvalidInput
from services.policies.ab_split import WeightedSplit
from services.policies.all_models import AllModels
from services.policies.base import Decision, Observation, Policy, SelectContext, State
from services.policies.epsilon_greedy import EpsilonGreedy
from services.policies.exp3 import Exp3
from services.policies.exp4 import Exp4
from services.policies.static import StaticModel
from services.policies.thompson import ThompsonSampling
from services.policies.ucb import UCB1

POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        StaticModel(),
        AllModels(),
        WeightedSplit(),
        Exp3(),
        Exp4(),
        EpsilonGreedy(),
        UCB1(),
        ThompsonSampling(),
    )
}
DEFAULT_POLICY = StaticModel.name

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Decision",
    "Observation",
    "Policy",
    "SelectContext",
    "State",
    "check",
    "get_policy",
]


def check(name: str, ctx: SelectContext) -> None:
    """Raise InvalidInput unless `name` is a policy and `ctx.params` are parameters it
    takes: the policy reads them as it does on every decision and feedback (on an empty
    state), so what is refused here is what would be refused there."""
    policy = get_policy(name)
    if not ctx.candidates:  # an application may have no linked model yet
        ctx = dataclasses.replace(ctx, candidates=("model",))
    policy.select(ctx, {})
    policy.observe(ctx, {}, Observation({m: 1.0 for m in ctx.candidates}))


def get_policy(name: str) -> Policy:
    policy = POLICIES.get(name or DEFAULT_POLICY)
    if policy is None:
        raise InvalidInput(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    return policy
