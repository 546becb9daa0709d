"""Replica liveness as each frontend sees it, on its own monotonic clock.

Every heartbeat writes a new random `beat` token into the replica's record.
A frontend notes, per replica, the token it last saw and when (its own
`clock.now()`) it saw the token change; a replica whose token has not changed
for a TTL is overdue. No time value crosses machines, so frontends whose wall
clocks disagree (or jump) still agree on which replicas are alive.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from services.common import clock


def new_beat() -> str:
    """A token for one heartbeat: differs from every earlier one of the replica."""
    return secrets.token_hex(8)


def beat_of(record: dict[str, Any]) -> str:
    """A stored record's heartbeat token. Records written by frontends of an earlier
    release carry `expires_at` instead, which also changes on every heartbeat: it
    serves as the token (never compared as a time)."""
    return str(record.get("beat", record.get("expires_at", "")))


class Liveness:
    def __init__(self, ttl_s: float, now: clock.Now = clock.now) -> None:
        self.ttl_s = ttl_s
        self._now = now
        # replica id -> (last token seen, clock.now() when it changed)
        self._seen: dict[str, tuple[str, float]] = {}

    def saw(self, replica_id: str, beat: str) -> None:
        """A token read from the store (or a heartbeat received here): the replica
        counts as alive from now if the token is new to this frontend (a replica seen
        for the first time gets a full TTL)."""
        seen = self._seen.get(replica_id)
        if seen is None or seen[0] != beat:
            self._seen[replica_id] = (beat, self._now())

    def beat(self, replica_id: str) -> str:
        return self._seen.get(replica_id, ("", 0.0))[0]

    def alive(self, replica_id: str) -> bool:
        seen = self._seen.get(replica_id)
        return seen is not None and self._now() - seen[1] < self.ttl_s

    def overdue(self, replica_ids: Iterable[str]) -> list[str]:
        """Those of `replica_ids` whose token has not changed for a TTL (one not seen
        yet counts as seen now)."""
        now = self._now()
        overdue = []
        for rid in replica_ids:
            _, at = self._seen.setdefault(rid, ("", now))
            if now - at >= self.ttl_s:
                overdue.append(rid)
        return overdue

    def forget(self, replica_id: str) -> None:
        self._seen.pop(replica_id, None)

    def keep_only(self, replica_ids: set[str]) -> None:
        self._seen = {rid: s for rid, s in self._seen.items() if rid in replica_ids}
