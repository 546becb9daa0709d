"""The policy states this selection replica has written (and the application-wide ones it
has read), kept so that a store that lost them can be rewritten from here.

A context's state is forgotten when it would have expired in the store (its
TTL after its last update here, on this process's monotonic clock), and at
most `max_contexts` of them are kept, the least recently updated dropped
first; application-wide states (one per application, never expired in the
store either) are always kept.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from services.common import clock
from services.policies.base import State


def progress(state: State) -> tuple[int, int]:
    """How far a state has learnt: (resets, rounds since). A reset writes a state with a
    higher `epoch`, so that no older copy, however many rounds it saw, wins over it."""
    return int(state.get("epoch", 0)), int(state.get("rounds", 0))


class StateMemory:
    def __init__(self, max_contexts: int) -> None:
        self.max_contexts = max_contexts
        self._app_wide: dict[str, State] = {}
        # key -> (state, clock.now() when it expires or None), least recently updated first
        self._contexts: OrderedDict[str, tuple[State, float | None]] = OrderedDict()

    def sizes(self) -> tuple[int, int]:
        """(application-wide states, context states) held."""
        return len(self._app_wide), len(self._contexts)

    def remember_app_wide(self, key: str, state: State) -> None:
        self._app_wide[key] = state

    def remember_context(self, key: str, state: State, ttl_s: float | None) -> None:
        self._contexts[key] = (state, None if ttl_s is None else clock.now() + ttl_s)
        self._contexts.move_to_end(key)
        while len(self._contexts) > self.max_contexts:
            self._contexts.popitem(last=False)

    def recall(self, key: str) -> State | None:
        """A copy of the state last seen for `key`, None if unknown or expired."""
        state = self._app_wide.get(key)
        if state is None:
            state, expires = self._contexts.get(key, (None, None))
            if state is None or (expires is not None and expires <= clock.now()):
                return None
        return copy.deepcopy(state)

    def progress(self, key: str) -> tuple[int, int]:
        """progress() of the state last seen for `key` ((0, 0): unknown or expired)."""
        state = self._app_wide.get(key)
        if state is None:
            state, expires = self._contexts.get(key, (None, None))
            if state is None or (expires is not None and expires <= clock.now()):
                return (0, 0)
        return progress(state)

    def forget(self, key: str, prefix: bool = False) -> None:
        """Drop the state of `key` (with `prefix`: of every key starting with it): reset."""
        for states in (self._app_wide, self._contexts):
            for k in [k for k in states if k == key or (prefix and k.startswith(key))]:
                del states[k]

    def entries(self) -> list[tuple[str, State, float | None]]:
        """(key, state, seconds left to live or None) of every state still remembered."""
        now = clock.now()
        out: list[tuple[str, State, float | None]] = [
            (key, state, None) for key, state in self._app_wide.items()]
        for key, (state, expires) in self._contexts.items():
            if expires is None or expires > now:
                out.append((key, state, None if expires is None else expires - now))
        return out

    def __len__(self) -> int:
        return len(self._app_wide) + len(self._contexts)
