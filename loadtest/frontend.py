"""What the frontend says about a run: its counters before and after, and the
application's record (SLO, linked models).

Counters come from each frontend's Prometheus endpoint (`--metrics-port`; several
URLs for several replicas, summed): prediction-cache hits and coalesced waits per
model, queries and default outputs per application. The record comes from the
Management API (the management token).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import grpc

from services.common.auth import bearer
from services.common.metrics import Samples, parse_metrics, read_metrics
from services.common.tls import ClientTLS, sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

# Prometheus names of the frontend's counters (services/frontend/metrics.py).
CACHE_HITS = "clipper_cache_hits_total"
CACHE_COALESCED = "clipper_cache_coalesced_total"
QUERIES = "clipper_queries_total"
DEFAULTS = "clipper_defaults_total"
COUNTED = (CACHE_HITS, CACHE_COALESCED, QUERIES, DEFAULTS)
# Outcomes of queries that were answered (by models, or with the default output); shed
# and failed queries may never have asked for a model answer.
ANSWERED = ("answered", "default")

# One counter series: (metric, model | application:outcome | application:cause).
Series = tuple[str, str]


@dataclass(frozen=True)
class AppRecord:
    slo_ms: float
    models: tuple[str, ...]


def read_app(target: str, app: str, token: str, tls: ClientTLS | None = None,
             timeout_s: float = 5.0) -> tuple[AppRecord | None, str]:
    """The application's record, or None and why it could not be read."""
    if not token:
        return None, "CLIPPER_MANAGEMENT_TOKEN is not set"
    with sync_channel(target, tls) as channel:
        try:
            record = pb_grpc.ManagementStub(channel).GetApplication(
                pb.ApplicationName(name=app), metadata=bearer(token), timeout=timeout_s)
        except grpc.RpcError as e:
            return None, f"GetApplication({app!r}): {e.code().name} {e.details()}"
    return AppRecord(float(record.slo_ms), tuple(record.linked_models)), ""


@dataclass(frozen=True)
class CacheUse:
    """Prediction-cache use over a run, for one application's queries."""

    queries: int  # answered, by the models or with the default output
    hits: int
    coalesced: int
    models: int  # model answers asked for per query

    @property
    def hit_ratio(self) -> float:
        """Model answers that came from the cache (or an identical query in flight)
        per model answer asked for."""
        asked = self.queries * self.models
        return (self.hits + self.coalesced) / asked if asked else 0.0

    def describe(self) -> str:
        return (f"cache hit ratio {self.hit_ratio:.3f} ({self.hits} hits, {self.coalesced} "
                f"coalesced, {self.queries} queries x {self.models} model(s))")


class FrontendCounters:
    """Reads the frontends' counters; `snapshot()` before a run, `since()` after."""

    def __init__(self, urls: list[str], timeout_s: float = 5.0) -> None:
        self.urls = urls
        self.timeout_s = timeout_s

    def snapshot(self) -> Counter[Series]:
        totals: Counter[Series] = Counter()
        for url in self.urls:
            totals.update(counted(read_metrics(url, self.timeout_s)))
        return totals

    def since(self, before: Counter[Series]) -> Counter[Series]:
        after = self.snapshot()
        after.subtract(before)
        return after


def parse(text: str) -> Counter[Series]:
    """The counted series of one frontend's Prometheus exposition."""
    return counted(parse_metrics(text))


def counted(samples: Samples) -> Counter[Series]:
    """The counted series among one frontend's samples."""
    totals: Counter[Series] = Counter()
    for name, labels, value in samples:
        if name not in COUNTED:
            continue
        app = labels.get("application", "")
        key = {QUERIES: f"{app}:{labels.get('outcome', '')}",
               DEFAULTS: f"{app}:{labels.get('cause', '')}"}.get(name, labels.get("model", ""))
        totals[(name, key)] += int(value)
    return totals


def cache_use(delta: Counter[Series], app: str, models: int = 0) -> CacheUse:
    """The run's cache use; `models` per query from the app record, else the models that
    show in the counters (at least one)."""
    seen = {key for (name, key), n in delta.items() if name in (CACHE_HITS, CACHE_COALESCED)
            and n}
    return CacheUse(
        queries=sum(delta[(QUERIES, f"{app}:{outcome}")] for outcome in ANSWERED),
        hits=sum(n for (name, _), n in delta.items() if name == CACHE_HITS),
        coalesced=sum(n for (name, _), n in delta.items() if name == CACHE_COALESCED),
        models=models or max(1, len(seen)),
    )


def defaults_served(delta: Counter[Series], app: str) -> dict[str, int]:
    """Default outputs served to the application over the run, by cause."""
    prefix = f"{app}:"
    return {key[len(prefix):]: n for (name, key), n in delta.items()
            if name == DEFAULTS and key.startswith(prefix) and n}
