"""Outlier ejection: a replica whose queries keep failing is set aside for a while.

A failure is a query the replica failed with UNAVAILABLE (its stream broke, a batch
timed out, it is unhealthy or shutting down), or one it left unanswered, past the
point where the frontend asks another replica, while nothing at all came from it
(a stopped, hung or cut-off process: a busy replica keeps sending other answers).
Errors that belong to the query (a bad input, a model that raised on it) and load
(a full queue, a query it could not make in time) are not failures.

After CONSECUTIVE_FAILURES in a row the replica is ejected: this frontend sends it
nothing for a back-off, BASE_EJECTION_S doubled at each ejection without an answer
in between, at most MAX_EJECTION_S. Then it is on probation: its first answer clears
its record, and a failure ejects it again at once. A replica whose stream broke and
was accepted again is on probation at once (it answers again). Only failures of
queries sent after it came back count, so that the queries it held when it was
ejected do not eject it again.

ReplicaTable decides whether an ejection may happen: at most half of a model's
connected replicas are ejected at once (a sole replica never is), and when every
replica left to ask is ejected, they are asked all the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONSECUTIVE_FAILURES = 5
BASE_EJECTION_S = 1.0
MAX_EJECTION_S = 30.0


@dataclass
class ReplicaHealth:
    """One replica's record; times are clock.now() times."""

    consecutive_failures: int = 0
    # Ejections without an answer in between (the back-off doubles with each).
    ejections: int = 0
    ejected_at: float = -math.inf
    ejected_until: float = -math.inf

    def back_at(self, connected_at: float) -> float:
        """When the last ejection ends (or ended): its back-off over, or a new stream."""
        if connected_at > self.ejected_at:
            return min(self.ejected_until, connected_at)
        return self.ejected_until

    def ejected_for(self, now: float, connected_at: float) -> float:
        """Seconds left of the replica's ejection (0 when it is not ejected)."""
        return max(self.back_at(connected_at) - now, 0.0)

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.ejections = 0

    def record_failure(self, sent_at: float, connected_at: float) -> bool:
        """Count the failure of a query sent at `sent_at`; True when the replica should
        now be ejected (the table may still keep it)."""
        if sent_at < self.back_at(connected_at):
            return False  # sent before it came back: already accounted for
        self.consecutive_failures += 1
        return self.ejections > 0 or self.consecutive_failures >= CONSECUTIVE_FAILURES

    def eject(self, now: float) -> float:
        """Eject the replica from `now`; returns the back-off in seconds."""
        backoff_s = min(BASE_EJECTION_S * 2.0 ** min(self.ejections, 32), MAX_EJECTION_S)
        self.ejections += 1
        self.consecutive_failures = 0
        self.ejected_at, self.ejected_until = now, now + backoff_s
        return backoff_s
