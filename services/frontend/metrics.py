"""The frontend's metrics (see services/common/metrics.py for how they are served)."""

from __future__ import annotations

from services.common.metrics import meter

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
