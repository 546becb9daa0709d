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

If the store loses its data (a Redis restarted without its volume), the states
this replica knows (state_memory.py) are written back: a generation marker
tells a lost store from an empty one (services/common/generation.py), checked
every second and by a feedback that finds its application-wide state missing;
a state already rewritten by another replica is kept when it has seen as many
rounds. Until then, decisions take a missing application-wide state (which
is never expired) from memory. A store restarted from an older copy (its last
writes lost) shows states with fewer rounds than this replica saw: the next
observation of such a state starts from this replica's copy.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable

from services.common.generation import GenerationGuard
from services.common.kv_store import KeyValueStore, Value, retry_while_unavailable
from services.selection.policies import Decision, Observation, SelectContext, get_policy
from services.selection.policies.base import State
from services.selection.state_memory import StateMemory

logger = logging.getLogger(__name__)

APP_WIDE = ""
# Longest a context's state may be kept without an update (ten years).
MAX_CONTEXT_TTL_S = 10 * 365 * 86400.0


def state_key(application: str, context_key: str) -> str:
    return f"policy-state/{application}/{context_key}"


class Decider:
    def __init__(self, store: KeyValueStore, context_ttl_s: float = 0.0,
                 max_contexts: int = 10_000) -> None:
        """`context_ttl_s`: how long a context's state lives after its last update (0: ever);
        `max_contexts`: most context states remembered to rewrite a lost store."""
        self.store = store
        self.context_ttl_s = context_ttl_s
        self.memory = StateMemory(max_contexts)
        self.generation = GenerationGuard(store, "policy-state", self.restore)

    async def start(self) -> None:
        """Check the store's generation (retried while it is away), then keep checking."""
        await retry_while_unavailable(self.generation.ensure, "policy state store")
        await self.generation.start()

    async def aclose(self) -> None:
        await self.generation.aclose()

    async def select(self, policy_name: str, ctx: SelectContext) -> Decision:
        policy = get_policy(policy_name)
        return policy.select(ctx, await self.load(ctx.application, ctx.context_key))

    async def observe(self, policy_name: str, ctx: SelectContext, obs: Observation) -> None:
        policy = get_policy(policy_name)

        def updater(key: str, start_from: State) -> Callable[[Value | None], Value]:
            def apply(current: Value | None) -> Value:
                app_wide = key == app_key
                return policy.observe(ctx, self._base(key, current, start_from, app_wide), obs)

            return apply

        app_key = state_key(ctx.application, APP_WIDE)
        app_state = await self.store.get(app_key)
        if app_state is None and await self.generation.ensure():  # new, or the store was lost
            app_state = await self.store.get(app_key)
        if ctx.context_key != APP_WIDE:
            ttl_s = ctx.float_param("context_ttl_s", self.context_ttl_s, 0.0, MAX_CONTEXT_TTL_S)
            # A new context starts from the application-wide state as it is now.
            key = state_key(ctx.application, ctx.context_key)
            state = await self.store.update(key, updater(key, app_state or {}),
                                            ttl_s=ttl_s or None)
            self.memory.remember_context(key, state, ttl_s or None)
        self.memory.remember_app_wide(app_key, await self.store.update(app_key,
                                                                      updater(app_key, {})))

    def _base(self, key: str, current: Value | None, start_from: State,
              app_wide: bool) -> State:
        """The state an observation applies to: the stored one, unless it has seen fewer
        rounds than this replica's copy (the store rolled back to an older copy); an
        application-wide state (never expired nor evicted) missing from the store was
        lost with it: this replica's copy if it has one. A new context: `start_from`."""
        if current is None:
            remembered = self.memory.recall(key) if app_wide else None
            return remembered or copy.deepcopy(start_from)
        if int(current.get("rounds", 0)) < self.memory.rounds(key):
            return self.memory.recall(key) or current
        return current

    async def load(self, application: str, context_key: str) -> State:
        """The context's own state, else the application-wide one, else empty."""
        keys = [state_key(application, context_key)]
        if context_key != APP_WIDE:
            keys.append(state_key(application, APP_WIDE))
        app_key = state_key(application, APP_WIDE)
        for key in keys:
            state = await self.store.get(key)
            if key == app_key:
                if state is None:  # never expired nor evicted: new, or lost with the store
                    state = self.memory.recall(key)
                else:
                    self.memory.remember_app_wide(key, state)
            if state is not None:
                return state
        return {}

    async def restore(self) -> None:
        """Rewrite the states remembered here into a store that lost them (the generation
        guard calls this); a state there that has seen as many rounds is kept."""
        entries = self.memory.entries()
        for key, state, ttl_s in entries:
            await self.store.update(key, functools.partial(_more_rounds, state), ttl_s=ttl_s)
        logger.info("rewrote %d policy states into the store", len(entries))


def _more_rounds(mine: State, current: Value | None) -> Value:
    """The stored state unless this copy has seen more rounds (observations)."""
    if current is not None and int(current.get("rounds", 0)) >= int(mine.get("rounds", 0)):
        return current
    return mine
