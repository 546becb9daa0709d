"""Test models with known behaviour, for real containers (`--model tests.helpers.models:X`)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.tensors import TensorSpec


class SumModel:
    """Returns the sum of each input as float64: distinct inputs give distinct answers."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return [np.float64(x.sum()) for x in inputs]


class VersionOne:
    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return [np.int64(1)] * len(inputs)


class VersionTwo:
    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return [np.int64(2)] * len(inputs)


class SlowModel:
    """Sleeps 1 s per batch: far past any test SLO."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        time.sleep(1.0)
        return [np.int64(7)] * len(inputs)


class FailsOnNegative:
    """Raises for a batch holding an input whose first value is negative, else sums."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        if any(float(x.reshape(-1)[0]) < 0 for x in inputs):
            raise ValueError("negative input")
        return [np.float64(x.sum()) for x in inputs]


def double(x: np.ndarray) -> np.ndarray:
    """A plain function model (served through CallableModel)."""
    return x * 2


class TenMsPerBatch:
    """Costs 10 ms per batch whatever its size; returns each input's sum."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        time.sleep(0.010)
        return [np.float64(x.sum()) for x in inputs]


class Counter:
    """Answers each input with how many inputs this process has run so far (1, 2, ...).

    Shows whether the model ran: a cached or joined answer does not move the count.
    """

    def __init__(self) -> None:
        self.seen = 0

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        outputs = []
        for _ in inputs:
            self.seen += 1
            outputs.append(np.int64(self.seen))
        return outputs


class Echo:
    """Returns each input as it came (any dtype, strings included)."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return list(inputs)


class SlowFailsOnNegative(FailsOnNegative):
    """FailsOnNegative at 20 ms per batch, so that concurrent queries share batches."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        time.sleep(0.020)
        return super().predict_batch(inputs)


class HangsOnNegative:
    """Sums each input, but a batch holding a negative first value never returns."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        if any(float(x.reshape(-1)[0]) < 0 for x in inputs):
            time.sleep(3600)
        return [np.float64(x.sum()) for x in inputs]


class CrashesOnNegative:
    """Sums each input; a negative first value kills the process running it."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        if any(float(x.reshape(-1)[0]) < 0 for x in inputs):
            os._exit(3)
        return [np.float64(x.sum()) for x in inputs]


class Twice:
    """Returns each input repeated twice (an answer twice the size of its query)."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return [np.concatenate([x.reshape(-1), x.reshape(-1)]) for x in inputs]


class SumAndPid:
    """Returns [sum of the input, this process's pid]: shows which replica answered."""

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return [np.array([x.sum(), os.getpid()], dtype=np.float64) for x in inputs]


class RecordsBatches:
    """Sums each input, and appends each batch's size to the file named by
    $CLIPPER_TEST_BATCH_LOG; its first batch also takes 300 ms (a framework's lazy
    set-up), and it writes `setup` there when that is done."""

    def __init__(self) -> None:
        self.path = os.environ["CLIPPER_TEST_BATCH_LOG"]
        self.set_up = False

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        with open(self.path, "a") as log:
            if not self.set_up:
                time.sleep(0.3)
                self.set_up = True
                log.write("setup\n")
            log.write(f"{len(inputs)}\n")
        return [np.float64(x.sum()) for x in inputs]


class MisanswersOnNegative:
    """Declares one named output, `sum` (float64, one value), and answers it, except for an
    input whose first value is negative: then three values, a shape it did not declare."""

    outputs = (TensorSpec("float64", (), name="sum"),)

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        return [{"sum": np.full(3, float(x.sum())) if float(x.reshape(-1)[0]) < 0
                 else np.float64(x.sum())} for x in inputs]


class SlowForItsFirstBatches:
    """Takes 40 ms on each of its first ten batches, as when its process waits for a CPU
    while it warms up, then answers at once: the sum of each input."""

    def __init__(self) -> None:
        self.batches = 0

    def predict_batch(self, inputs: list[np.ndarray]) -> Sequence[Any]:
        self.batches += 1
        if self.batches <= 10:
            time.sleep(0.04)
        return [np.float64(x.sum()) for x in inputs]
