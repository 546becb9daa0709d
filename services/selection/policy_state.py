"""What a learning policy believes, arm by arm, for an operator to read (GetPolicyState).

Each arm is a model at one version (services/selection/arms.py): the versions
queries are answered by now first, in the application's order, then the older
versions kept for a rollback. Exp3 and Exp4 show each arm's weight (Exp3: the
probability of being drawn; Exp4: its share of the ensemble); every policy
shows the mean reward (discounted) and how many answers it counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.policies import log_weights
from services.policies.base import Policy, SelectContext, State, mean_reward
from services.policies.exp3 import Exp3
from services.policies.exp4 import Exp4
from services.selection import arms


@dataclass(frozen=True)
class ArmView:
    model: str
    version: str
    current: bool
    weight: float
    estimate: float  # -1: no answer counted yet
    count: float


def describe(policy: Policy, ctx: SelectContext, state: State) -> list[ArmView]:
    current = list(arms.arms_of(ctx).values())
    older = sorted(set(state.get("models", {})) - set(current))
    arm_ctx = SelectContext(ctx.application, ctx.context_key, tuple(current), ctx.params)
    weights: dict[str, float] = {}
    if current and isinstance(policy, Exp3):
        weights = policy.probabilities(arm_ctx, state)
    elif current and isinstance(policy, Exp4):
        weights = log_weights.probabilities(state, arm_ctx.candidates)
    views = []
    for name in current + older:
        stats = state.get("models", {}).get(name, {})
        estimate = mean_reward(state, name)
        model, _, version = name.partition(arms.SEPARATOR)
        views.append(ArmView(model, version, name in current, weights.get(name, 0.0),
                             -1.0 if estimate is None else estimate,
                             float(stats.get("n", 0.0))))
    return views
