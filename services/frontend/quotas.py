"""Per-client quotas: how many queries per second one client may send to one application.

A client is its API key (hashed) when the application needs keys (so the key was
checked), else its address: the host, not the port, so that a client gets no fresh
quota per connection, nor per made-up key. Each (application,
client) pair has a token bucket: `qps` tokens a second, at most `burst` saved up,
one spent per query. A query finding the bucket empty gets QuotaExceeded
(RESOURCE_EXHAUSTED) with `grpc-retry-pushback-ms` saying when the next token is
due; unlike a query shed for overload, it never gets the application's default:
the client, not the mesh, is past its share.

The rate is the application's `client_quota_qps` when set, else the frontend's
`--client-quota-qps`; 0 means no quota. At most `--max-quota-clients` buckets are
kept, least recently used dropped first (a dropped bucket starts full again, as a
client idle long enough to be dropped would have refilled it anyway).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from services.common import clock
from services.common.auth import Caller
from services.common.config import NON_NEGATIVE, POSITIVE, flag
from services.common.errors import QuotaExceeded
from services.frontend.records import Application


@dataclass(frozen=True)
class QuotaLimits:
    """The quota flags of the frontend (`section(QuotaLimits)`)."""

    # Queries per second per client and application, when the application sets none; 0: none.
    client_qps: float = flag(0.0, "queries per second each client (its API key, else its "
                             "address) may send to an application that sets no "
                             "client_quota_qps; 0: no quota", name="client-quota-qps",
                             check=NON_NEGATIVE)
    # Buckets kept (clients x applications), least recently used dropped past it.
    max_clients: int = flag(100_000, "client quota buckets kept, least recently used dropped "
                            "past it", name="max-quota-clients", check=POSITIVE)


@dataclass
class _Bucket:
    tokens: float
    at: float


class Quotas:
    """The token buckets of the clients of every application."""

    def __init__(self, limits: QuotaLimits, now: clock.Now = clock.now) -> None:
        self.limits = limits
        self._now = now
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def rate(self, app: Application) -> tuple[float, float]:
        """The application's (queries per second, burst) per client; (0, 0): no quota."""
        qps = app.client_quota_qps or self.limits.client_qps
        if qps <= 0:
            return 0.0, 0.0
        return qps, float(app.client_quota_burst or max(math.ceil(qps), 1))

    def take(self, app: Application, caller: Caller) -> None:
        """Spend one of the caller's tokens for `app`, or raise QuotaExceeded."""
        qps, burst = self.rate(app)
        if qps <= 0:
            return
        client = caller.api_key_sha256 if app.api_key_sha256 else caller.peer
        key = (app.name, client)
        now = self._now()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
            if len(self._buckets) > self.limits.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * qps)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        retry_ms = max(math.ceil((1 - bucket.tokens) / qps * 1000), 1)
        raise QuotaExceeded(
            f"client quota of application {app.name!r} used up ({qps:g} queries/s, burst "
            f"{burst:g}): retry in {retry_ms} ms", retry_after_ms=retry_ms)
