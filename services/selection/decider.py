"""The selection core: loads policy state per (application, context), decides, learns."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from services.common.kv_store import KeyValueStore
from services.selection.policies import Observation, SelectContext, get_policy
from services.selection.policies.base import State


def state_key(application: str, context_key: str) -> str:
    return f"policy-state/{application}/{context_key}"


class Decider:
    """Runs policies over their persisted state; updates to one key are serialised."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def select(self, policy_name: str, ctx: SelectContext) -> list[tuple[str, float]]:
        policy = get_policy(policy_name)
        return policy.select(ctx, await self._load(ctx))

    async def observe(self, policy_name: str, ctx: SelectContext, obs: Observation) -> None:
        policy = get_policy(policy_name)
        key = state_key(ctx.application, ctx.context_key)
        async with self._locks[key]:
            state = await self._load(ctx)
            await self.store.put(key, policy.observe(ctx, state, obs))

    async def _load(self, ctx: SelectContext) -> State:
        """The context's own state, else the application-wide one, else empty."""
        for key in (state_key(ctx.application, ctx.context_key), state_key(ctx.application, "")):
            state = await self.store.get(key)
            if state is not None:
                return state
        return {}
