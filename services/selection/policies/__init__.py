"""Selection policies by name. A new policy is one module plus one line in POLICIES."""

from __future__ import annotations

from services.common.errors import InvalidInput
from services.selection.policies.all_models import AllModels
from services.selection.policies.base import Observation, Policy, SelectContext
from services.selection.policies.static import StaticModel

POLICIES: dict[str, Policy] = {p.name: p for p in (StaticModel(), AllModels())}
DEFAULT_POLICY = StaticModel.name

__all__ = ["DEFAULT_POLICY", "POLICIES", "Observation", "Policy", "SelectContext", "get_policy"]


def get_policy(name: str) -> Policy:
    policy = POLICIES.get(name or DEFAULT_POLICY)
    if policy is None:
        raise InvalidInput(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    return policy
