"""What each application's learning policy weighs its models at, for the metrics.

The decider notes, per application, the policy and candidates of its latest decision
(one dict write per decision). At each scrape, `current_weights` describes the
application-wide state this replica last read or wrote (state_memory.py) as
GetPolicyState does (policy_state.py): for Exp3 each model's probability of being
drawn, for Exp4 its share of the ensemble, and for every learning policy its
estimated reward. Application-wide only: context keys would be unbounded label values.
With several selection replicas, each shows the state as it last saw it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from services.policies import SelectContext, get_policy
from services.policies.exp3 import Exp3
from services.policies.exp4 import Exp4
from services.selection.decider import APP_WIDE, Decider, state_key
from services.selection.policy_state import describe

# Policies whose decision weighs models (describe() gives their weights).
WEIGHING_POLICIES = (Exp3.name, Exp4.name)


@dataclass(frozen=True)
class ArmWeight:
    application: str
    policy: str
    model: str
    version: str
    weight: float | None  # None: the policy does not weigh models (UCB, Thompson, ...)
    estimate: float | None  # None: no answer counted yet


def current_weights(decider: Decider) -> Iterator[ArmWeight]:
    """The models each application decided between last, as its state weighs them now."""
    for application, (policy_name, ctx) in list(decider.latest.items()):
        state = decider.memory.recall(state_key(application, APP_WIDE))
        if state is None:
            continue
        app_wide = SelectContext(application, APP_WIDE, ctx.candidates, ctx.params,
                                 ctx.versions)
        weighs = policy_name in WEIGHING_POLICIES
        for arm in describe(get_policy(policy_name), app_wide, state):
            if arm.current:
                yield ArmWeight(application, policy_name, arm.model, arm.version,
                                arm.weight if weighs else None,
                                None if arm.estimate < 0 else arm.estimate)
