"""Ask one model for its answer to one input by a deadline: the one place that knows how.

The version is the model's active one unless the query pins another; the
prediction cache answers a repeated input (and joins identical queries in
flight); otherwise the replica table picks a replica of that version, retries
another when the first fails, and hedges a slow one (replica_table.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable

from opentelemetry.trace import Span

from services.common import tracing
from services.common.named_tensors import Value
from services.frontend.prediction_cache import PredictionCache
from services.frontend.registry import Registry
from services.frontend.replica_table import ReplicaStatus, ReplicaTable


class ModelRouter:
    def __init__(self, registry: Registry, replicas: ReplicaTable,
                 cache: PredictionCache) -> None:
        self.registry = registry
        self.replicas = replicas
        self.cache = cache

    def version_of(self, model: str, pinned: str = "") -> str:
        """The version a query of `model` is answered by ("" when the model is unknown)."""
        record = self.registry.models.get(model)
        return pinned or (record.active_version if record else "")

    def versions(self, models: tuple[str, ...], pinned: str = "") -> dict[str, str]:
        """The version each of `models` answers with (known models only); learning
        policies keep a record per (model, version)."""
        return {m: version for m in models if (version := self.version_of(m, pinned))}

    def replica_status(self, replica_id: str) -> ReplicaStatus:
        return self.replicas.status(replica_id)

    def ready(self, model: str, pinned: str = "") -> bool:
        """Whether some replica of the model's version is connected."""
        return bool(self.replicas.candidates(model, pinned))

    async def ask(self, model: str, value: Value, deadline: float,
                  pinned: str = "") -> tuple[str, Value]:
        """("model:version", output): the cached answer, else a replica's."""
        version = self.version_of(model, pinned)
        fetch = functools.partial(self.replicas.query, model, value, deadline, version)
        if not (tracing.enabled and tracing.active()):
            return await self.cache.answer(model, version, value, deadline, fetch)
        with tracing.tracer().start_as_current_span(
                "clipper.model", attributes={"clipper.model": model,
                                             "clipper.version": version}) as span:
            return await _traced(span, self.cache.answer(model, version, value, deadline, fetch))


async def _traced(span: Span, asking: Awaitable[tuple[str, Value]]) -> tuple[str, Value]:
    """The model's answer, its span saying who served it or that it came too late."""
    try:
        served_by, output = await asking
    except asyncio.CancelledError:
        span.set_attribute("clipper.late", True)  # the query's deadline passed first
        raise
    span.set_attribute("clipper.served_by", served_by)
    return served_by, output
