"""The frontend's access log: one record per query, for a sampled share of them.

Off by default (`--access-log-sample 0`); 1 logs every query. A record says what an
operator asks of a query (application, query id, status, latency, the models that
answered, whether the default went out and why) and never its input or output.
"""

from __future__ import annotations

import logging
import random
from typing import Any

logger = logging.getLogger("clipper.access")


class AccessLog:
    def __init__(self, sample: float = 0.0) -> None:
        """`sample`: the share of queries logged (0: none, 1: every one)."""
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample {sample}: expected a share 0..1")
        self.sample = sample

    @property
    def on(self) -> bool:
        return self.sample > 0.0

    def sampled(self) -> bool:
        """Whether this query is logged (draws once per query, only when on)."""
        return self.sample >= 1.0 or (self.sample > 0.0 and random.random() < self.sample)

    def write(self, fields: dict[str, Any]) -> None:
        logger.info("query", extra={"fields": fields})
