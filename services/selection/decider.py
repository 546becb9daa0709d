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
from services.policies import Decision, Observation, SelectContext, get_policy
from services.policies.base import State
from services.selection import arms
from services.selection.state_memory import StateMemory, progress

logger = logging.getLogger(__name__)

APP_WIDE = ""
# Longest a context's state may be kept without an update (ten years).
MAX_CONTEXT_TTL_S = 10 * 365 * 86400.0


def state_key(application: str, context_key: str) -> str:
    return f"policy-state/{application}/{context_key}"


class Decider:
    def __init__(self, store: KeyValueStore, context_ttl_s: float = 0.0,
                 max_contexts: int = 10_000,
                 versions_kept: int = arms.DEFAULT_VERSIONS_KEPT) -> None:
        """`context_ttl_s`: how long a context's state lives after its last update (0: ever);
        `max_contexts`: most context states remembered to rewrite a lost store;
        `versions_kept`: most versions of one model with a record in a state."""
        self.store = store
        self.context_ttl_s = context_ttl_s
        self.versions_kept = versions_kept
        self.memory = StateMemory(max_contexts)
        # application -> (policy, query) of its latest learning decision (weights.py)
        self.latest: dict[str, tuple[str, SelectContext]] = {}
        self.generation = GenerationGuard(store, "policy-state", self.restore)

    async def start(self) -> None:
        """Check the store's generation (retried while it is away), then keep checking."""
        await retry_while_unavailable(self.generation.ensure, "policy state store")
        await self.generation.start()

    async def aclose(self) -> None:
        await self.generation.aclose()

    async def select(self, policy_name: str, ctx: SelectContext) -> Decision:
        policy = get_policy(policy_name)
        if policy.stateless:
            return policy.select(ctx, {})
        decision = arms.decide(policy, ctx, await self.load(ctx.application, ctx.context_key,
                                                            ctx))
        self.latest[ctx.application] = (policy_name, ctx)
        return decision

    async def observe(self, policy_name: str, ctx: SelectContext, obs: Observation) -> None:
        policy = get_policy(policy_name)

        def updater(key: str, start_from: State) -> Callable[[Value | None], Value]:
            def apply(current: Value | None) -> Value:
                app_wide = key == app_key
                base = self._base(key, current, start_from, app_wide)
                if not app_wide:  # versions it has not seen yet: the application's record
                    base = arms.seed(base, app_state or {}, ctx)
                return arms.learn(policy, ctx, base, obs, self.versions_kept)

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
        if progress(current) < self.memory.progress(key):
            return self.memory.recall(key) or current
        return current

    async def load(self, application: str, context_key: str,
                   ctx: SelectContext | None = None) -> State:
        """The context's own state, else the application-wide one, else empty.

        With `ctx`, a context's state gets the application-wide record of each
        candidate version it has not seen (arms.seed)."""
        return (await self._load(application, context_key, ctx))[0]

    async def inspect(self, ctx: SelectContext) -> tuple[State, str]:
        """What `select` decides from for `ctx`, and where it comes from: "context",
        "application" or "none"."""
        return await self._load(ctx.application, ctx.context_key, ctx)

    async def _load(self, application: str, context_key: str,
                    ctx: SelectContext | None) -> tuple[State, str]:
        own = None
        if context_key != APP_WIDE:
            own = await self.store.get(state_key(application, context_key))
            if own is not None and (ctx is None or not arms.unseen(own, ctx)):
                return own, "context"
        app_key = state_key(application, APP_WIDE)
        app_state = await self.store.get(app_key)
        if app_state is None:  # never expired nor evicted: new, or lost with the store
            app_state = self.memory.recall(app_key)
        else:
            self.memory.remember_app_wide(app_key, app_state)
        if own is not None:
            assert ctx is not None  # own is returned above without one
            return arms.seed(own, app_state or {}, ctx), "context"
        if app_state is None or not app_state.get("rounds"):
            return app_state or {}, "none"
        return app_state, "application"

    async def reset(self, application: str, context_key: str) -> int:
        """Forget a context's state; without a context key, the application-wide state and
        every context's. Returns how many states had something to forget.

        The application-wide state is replaced by an empty one of a higher `epoch`, so
        that no replica's remembered copy (state_memory.py) brings it back."""
        prefix = state_key(application, context_key)
        self.memory.forget(prefix, prefix=context_key == APP_WIDE)
        if context_key != APP_WIDE:
            return int(await self.store.delete(prefix))
        contexts = [k for k in await self.store.scan(prefix) if k != prefix]
        deleted = sum([await self.store.delete(k) for k in contexts])
        had_rounds = False

        def cleared(current: Value | None) -> Value:
            nonlocal had_rounds
            had_rounds = bool(current and current.get("rounds"))
            return {"epoch": progress(current or {})[0] + 1, "rounds": 0}

        self.memory.remember_app_wide(prefix, await self.store.update(prefix, cleared))
        return deleted + int(had_rounds)

    async def restore(self) -> None:
        """Rewrite the states remembered here into a store that lost them (the generation
        guard calls this); a state there that has seen as many rounds is kept."""
        entries = self.memory.entries()
        for key, state, ttl_s in entries:
            await self.store.update(key, functools.partial(_more_rounds, state), ttl_s=ttl_s)
        logger.info("rewrote %d policy states into the store", len(entries))


def _more_rounds(mine: State, current: Value | None) -> Value:
    """The stored state unless this copy has seen more rounds (observations) since the
    last reset."""
    if current is not None and progress(current) >= progress(mine):
        return current
    return mine
