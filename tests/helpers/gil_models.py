"""Models that hold the GIL, for the worker tests (`--model tests.helpers.gil_models:X`)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

SPIN_S = 0.004


def _spin(seconds: float) -> None:
    """Python bytecode for `seconds`: the GIL is held but at the interpreter's switches."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class HoldsTheGil:
    """4 ms of pure Python per batch; answers each input's sum."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        _spin(SPIN_S)
        return [np.float64(x.sum()) for x in inputs]


class OneProcessOnly(HoldsTheGil):
    """Holds the GIL like HoldsTheGil, and refuses to load in a second process (as a model
    bound to a device, a lock file or a licence would)."""

    def __init__(self) -> None:
        if multiprocessing.parent_process() is not None:
            raise RuntimeError("this model is bound to its first process")


class Sleeps:
    """4 ms per batch spent sleeping (the GIL released, as native code does)."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        time.sleep(SPIN_S)
        return [np.float64(x.sum()) for x in inputs]
