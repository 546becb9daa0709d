"""Synthetic models with a known cost, for benchmarks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

FIXED_S = 0.005
PER_ITEM_S = 0.0001


class Synthetic:
    """5 ms per batch plus 0.1 ms per item (sleeps, so it releases the GIL like a real model)."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        time.sleep(FIXED_S + PER_ITEM_S * len(inputs))
        return [np.int64(1)] * len(inputs)


class NoOp:
    """Costs nothing: what is left is the serving system's own overhead."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return [np.int64(0)] * len(inputs)
