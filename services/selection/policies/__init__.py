"""Selection policies by name. A new policy is one module plus one entry in POLICIES."""

from __future__ import annotations

from services.common.errors import InvalidInput
from services.selection.policies.ab_split import WeightedSplit
from services.selection.policies.all_models import AllModels
from services.selection.policies.base import Decision, Observation, Policy, SelectContext, State
from services.selection.policies.epsilon_greedy import EpsilonGreedy
from services.selection.policies.exp3 import Exp3
from services.selection.policies.exp4 import Exp4
from services.selection.policies.static import StaticModel
from services.selection.policies.thompson import ThompsonSampling
from services.selection.policies.ucb import UCB1

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
    "get_policy",
]


def get_policy(name: str) -> Policy:
    policy = POLICIES.get(name or DEFAULT_POLICY)
    if policy is None:
        raise InvalidInput(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    return policy
