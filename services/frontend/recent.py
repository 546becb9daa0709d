"""Recent predictions by query id, so feedback can be joined without re-running models."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from services.generated.clipper.v1 import clipper_pb2 as pb


@dataclass(frozen=True)
class RecentPrediction:
    application: str
    context_key: str
    outputs: dict[str, pb.Tensor]  # model name -> its output
    stored_at: float


class RecentPredictions:
    """A bounded LRU map with a TTL (monotonic clock)."""

    def __init__(self, max_entries: int = 100_000, ttl_s: float = 600.0) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, RecentPrediction] = OrderedDict()

    def put(self, query_id: str, application: str, context_key: str,
            outputs: dict[str, pb.Tensor]) -> None:
        self._items[query_id] = RecentPrediction(
            application, context_key, outputs, time.monotonic()
        )
        self._items.move_to_end(query_id)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, query_id: str) -> RecentPrediction | None:
        item = self._items.get(query_id)
        if item is None:
            return None
        if time.monotonic() - item.stored_at > self.ttl_s:
            del self._items[query_id]
            return None
        return item
