"""Online estimate of a model's batch latency as a function of batch size.

The last `window` (batch size, latency) observations are kept. Every few
observations a line latency = fixed + per_item * size is fitted (slope and
intercept kept non-negative) through the median latency at each size seen, each
size weighted by its count, and lifted by a high quantile of the residuals of all
observations, so the estimate is a high quantile of the latency at each size,
learnt at the sizes actually run and carried to the sizes not yet tried. Medians,
not means: a few batches that waited out a stall of the process (a CPU quota's
throttling, a busy machine at start-up) say nothing of the model, and must not
move the line (least squares through them put a 0.1 ms model at 17-41 ms).
While every batch seen had the same size, the estimate is that size's latency
for any size (flat): enough to refuse queries that cannot finish in time, but
the model is not `known`, so the batcher still sizes batches by AIMD, which
explores other sizes until a line can be fitted.

A probe, a batch run although the estimate said it would be late
(services/model_container/batcher.py), that takes under half the typical estimate
shows the observations are stale: they are dropped, and the line is learnt again.
"""

from __future__ import annotations

from collections import deque

import numpy as np

MIN_SAMPLES = 8
REFIT_EVERY = 8
# A probe faster than this share of the typical estimate resets the model.
STALE_SHARE = 0.5


class LatencyModel:
    def __init__(self, quantile: float = 0.99, window: int = 256) -> None:
        self.quantile = quantile
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self._fixed_s = 0.0
        self._per_item_s = 0.0
        self._margin_s = 0.0
        self._fitted = False
        self._one_size = False
        self._since_fit = 0

    @property
    def known(self) -> bool:
        """True once batches of two different sizes gave a line."""
        return self._fitted and not self._one_size

    def observe(self, batch_size: int, latency_s: float, probe: bool = False) -> None:
        """One batch's latency; `probe`: the batch ran although it was estimated late."""
        if probe:
            typical = self.typical(batch_size)
            if typical is not None and latency_s < typical * STALE_SHARE:
                self._samples.clear()  # learnt again from the batches that now run
                self._fitted = False
                self._since_fit = 0
        self._samples.append((batch_size, latency_s))
        self._since_fit += 1
        if self._since_fit >= REFIT_EVERY:
            self._refit()

    def fit(self) -> None:
        """Fit the line to the observations now (they are refitted every few otherwise)."""
        self._refit()

    def estimate(self, batch_size: int) -> float | None:
        """High-quantile latency (s) of a batch of this size, or None while unknown."""
        if not self._fitted:
            return None
        return self._fixed_s + self._per_item_s * batch_size + self._margin_s

    def largest_within(self, budget_s: float, cap: int, typical: bool = False) -> int:
        """The largest batch size (up to `cap`) whose estimate fits `budget_s`; 0 if none.

        With `typical`, by the fitted line alone rather than its high quantile.
        """
        if not self._fitted:
            return 0
        room = budget_s - self._fixed_s - (0.0 if typical else self._margin_s)
        if room < self._per_item_s:
            return 0
        if self._per_item_s <= 0:
            return cap
        return min(cap, int(room / self._per_item_s))

    def typical(self, batch_size: int) -> float | None:
        """The fitted line without the quantile lift: what a batch usually takes."""
        if not self._fitted:
            return None
        return self._fixed_s + self._per_item_s * batch_size

    def line(self) -> tuple[float, float] | None:
        """(fixed_s, per_item_s) of the fitted line, before the quantile lift."""
        return (self._fixed_s, self._per_item_s) if self._fitted else None

    def _refit(self) -> None:
        self._since_fit = 0
        if len(self._samples) < MIN_SAMPLES:
            return
        data = np.array(self._samples, dtype=float)
        sizes, latency = data[:, 0], data[:, 1]
        order = np.lexsort((latency, sizes))  # by size, then latency
        ordered = latency[order]
        seen, first, counts = np.unique(sizes[order], return_index=True, return_counts=True)
        medians = (ordered[first + (counts - 1) // 2] + ordered[first + counts // 2]) / 2
        self._one_size = len(seen) == 1
        if self._one_size:  # flat: that size's latency, whatever the size
            per_item, fixed = 0.0, float(medians[0])
        else:  # counts as weights: polyfit squares w, so the square roots
            per_item, fixed = np.polyfit(seen, medians, 1, w=np.sqrt(counts))
        if per_item < 0:
            per_item, fixed = 0.0, float(np.median(latency))
        if fixed < 0:
            fixed, per_item = 0.0, float(np.dot(counts * seen, medians)
                                         / np.dot(counts * seen, seen))
        residuals = latency - (fixed + per_item * sizes)
        self._fixed_s, self._per_item_s = float(fixed), float(per_item)
        self._margin_s = max(0.0, float(np.quantile(residuals, self.quantile)))
        self._fitted = True
