"""The frontend's metrics (see services/common/metrics.py for how they are served)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from services.common import clock
from services.common.metrics import meter

if TYPE_CHECKING:
    from services.frontend.replica_client import ReplicaClient
    from services.frontend.replica_table import ReplicaTable

_meter = meter("clipper.frontend")

queries = _meter.create_counter(
    "clipper.queries", description="Queries answered, by application and outcome "
    "(answered, default, error)")
query_duration = _meter.create_histogram(
    "clipper.query.duration", unit="ms", description="Time to answer a query, by application")
defaults = _meter.create_counter(
    "clipper.defaults", description="Default outputs served, by application and cause "
    "(deadline, low_confidence, error)")
missing_models = _meter.create_counter(
    "clipper.missing_models", description="Selected models left out of an answer (late or "
    "failed), by application and model")
selection_fallbacks = _meter.create_counter(
    "clipper.selection.fallbacks", description="Decisions made without the selection "
    "service (it was unreachable, slow or failing), by application")
cache_hits = _meter.create_counter(
    "clipper.cache.hits", description="Model answers served from the prediction cache, by model")
cache_coalesced = _meter.create_counter(
    "clipper.cache.coalesced", description="Queries that waited for an identical query "
    "already in flight instead of asking the model, by model")
replica_ejections = _meter.create_counter(
    "clipper.replica.ejections", description="Replicas set aside for a back-off after "
    "repeated failures (outlier ejection), by model")
hedges = _meter.create_counter(
    "clipper.hedges", description="Queries also asked of a second replica because the "
    "first had not answered after half their time, by model")


def watch_mesh(table: ReplicaTable) -> None:
    """Gauges read from `table` (and its registry) at each scrape, nothing recorded per
    query: the health of each replica's stream (`clipper.replica.connected`, `.in_flight`,
    `.ejected` and `.reconnects` by model, version and replica address),
    `clipper.replicas.connected` per known or linked model (0 when none is: the alert for
    a model without replicas), `clipper.model.applications` (the applications linking
    each model: that alert is for linked models only) and each application's SLO
    (`clipper.application.slo`, for dashboards to draw latency against)."""
    def replicas() -> Iterator[tuple[ReplicaClient, dict[str, str]]]:
        for client in list(table.clients.values()):
            r = client.record
            yield client, {"model": r.model, "version": r.version, "replica": r.address}

    def connected(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(int(c.connected), attrs) for c, attrs in replicas()]

    def in_flight(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(c.outstanding, attrs) for c, attrs in replicas()]

    def ejected(_: CallbackOptions) -> Iterable[Observation]:
        now = clock.now()
        return [Observation(int(c.ejected_for(now) > 0), attrs) for c, attrs in replicas()]

    def reconnects(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(c.reconnects, attrs) for c, attrs in replicas()]

    def links() -> dict[str, int]:
        counts = dict.fromkeys(list(table.registry.models), 0)
        for app in list(table.registry.apps.values()):
            for model in app.linked_models:
                counts[model] = counts.get(model, 0) + 1
        return counts

    def per_model(_: CallbackOptions) -> Iterable[Observation]:
        counts = dict.fromkeys(links(), 0)
        for client, attrs in replicas():
            counts[attrs["model"]] = counts.get(attrs["model"], 0) + int(client.connected)
        return [Observation(n, {"model": m}) for m, n in counts.items()]

    def linked(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"model": m}) for m, n in links().items()]

    _meter.create_observable_gauge(
        "clipper.replica.connected", callbacks=[connected],
        description="1 while this frontend's stream to the replica is up")
    _meter.create_observable_gauge(
        "clipper.replica.in_flight", callbacks=[in_flight],
        description="Queries sent to the replica and not answered yet")
    _meter.create_observable_gauge(
        "clipper.replica.ejected", callbacks=[ejected],
        description="1 while the replica is set aside after repeated failures")
    _meter.create_observable_counter(
        "clipper.replica.reconnects", callbacks=[reconnects],
        description="Times the stream to the replica was accepted again after the first")
    _meter.create_observable_gauge(
        "clipper.replicas.connected", callbacks=[per_model],
        description="Replicas of the model this frontend has a stream to, by model")
    _meter.create_observable_gauge(
        "clipper.model.applications", callbacks=[linked],
        description="Applications the model is linked to, by model")

    def slo(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(app.slo_ms, {"application": name})
                for name, app in list(table.registry.apps.items())]

    _meter.create_observable_gauge(
        "clipper.application.slo", unit="ms", callbacks=[slo],
        description="The application's latency SLO")
