"""The selection core: loads policy state per (application, context), decides, learns.

A context (a user id, or any key the client sends) starts from the
application-wide state and then learns on its own: every observation updates
the context's state and the application-wide one, each atomically in the store
(so several selection replicas or frontends sharing one Redis lose no update).

Clients choose context keys, so their states are bounded: each expires
`context_ttl_s` after its last update (the application's policy parameter
`context_ttl_s`, else the service's `--context-ttl-s`), and the store evicts
the least recently updated past its cap. A context whose state is gone falls
back to the application-wide state, which is never expired.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from services.common.kv_store import KeyValueStore, Value
from services.selection.policies import Decision, Observation, SelectContext, get_policy
from services.selection.policies.base import State

APP_WIDE = ""
# Longest a context's state may be kept without an update (ten years).
MAX_CONTEXT_TTL_S = 10 * 365 * 86400.0


def state_key(application: str, context_key: str) -> str:
    return f"policy-state/{application}/{context_key}"


class Decider:
    def __init__(self, store: KeyValueStore, context_ttl_s: float = 0.0) -> None:
        """`context_ttl_s`: how long a context's state lives after its last update (0: ever)."""
        self.store = store
        self.context_ttl_s = context_ttl_s

    async def select(self, policy_name: str, ctx: SelectContext) -> Decision:
        policy = get_policy(policy_name)
        return policy.select(ctx, await self.load(ctx.application, ctx.context_key))

    async def observe(self, policy_name: str, ctx: SelectContext, obs: Observation) -> None:
        policy = get_policy(policy_name)

        def updater(start_from: State) -> Callable[[Value | None], Value]:
            def apply(current: Value | None) -> Value:
                state = current if current is not None else copy.deepcopy(start_from)
                return policy.observe(ctx, state, obs)

            return apply

        app_key = state_key(ctx.application, APP_WIDE)
        if ctx.context_key != APP_WIDE:
            ttl_s = ctx.float_param("context_ttl_s", self.context_ttl_s, 0.0, MAX_CONTEXT_TTL_S)
            # A new context starts from the application-wide state as it is now.
            app_state = await self.store.get(app_key) or {}
            await self.store.update(state_key(ctx.application, ctx.context_key),
                                    updater(app_state), ttl_s=ttl_s or None)
        await self.store.update(app_key, updater({}))

    async def load(self, application: str, context_key: str) -> State:
        """The context's own state, else the application-wide one, else empty."""
        keys = [state_key(application, context_key)]
        if context_key != APP_WIDE:
            keys.append(state_key(application, APP_WIDE))
        for key in keys:
            state = await self.store.get(key)
            if state is not None:
                return state
        return {}
