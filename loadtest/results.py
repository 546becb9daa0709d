"""One measured ghz run: latency, status codes, the share answered within the SLO,
defaults served and cache use, from ghz's per-call details and the frontend's counters."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loadtest import ghz
from loadtest.frontend import CacheUse

# A rate held when p99 is within the SLO and at least this share of calls was answered
# by the models within it.
HELD_SHARE = 0.999
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RunResult:
    """What one ghz run measured. Latency percentiles are of OK calls; `defaults` and
    `cache` are None without the frontend's counters, `within_slo` without an SLO."""

    name: str
    calls: int
    elapsed_s: float
    rps: float
    mean_ms: float
    latency_ms: dict[int, float]
    errors: dict[str, int]
    error_messages: dict[str, int] = field(default_factory=dict)
    offered_rps: float | None = None
    slo_ms: float | None = None
    ok_within_slo: int | None = None
    defaults: dict[str, int] | None = None
    cache: CacheUse | None = None

    @classmethod
    def from_report(cls, report: dict[str, Any], slo_ms: float | None = None,
                    offered_rps: float | None = None, defaults: dict[str, int] | None = None,
                    cache: CacheUse | None = None) -> RunResult:
        details = report.get("details") or []
        ok_ms = np.array([d["latency"] for d in details if d.get("status") == "OK"],
                         dtype=np.float64) / 1e6
        return cls(
            name=str(report.get("name", "?")),
            calls=int(report.get("count", len(details))),
            elapsed_s=float(report.get("total", 0)) / 1e9,
            rps=float(report.get("rps", 0.0)),
            mean_ms=float(ok_ms.mean()) if ok_ms.size else math.nan,
            latency_ms={p: float(np.percentile(ok_ms, p)) if ok_ms.size else math.nan
                        for p in PERCENTILES},
            errors=ghz.errors(report),
            error_messages={str(m): int(n)
                            for m, n in (report.get("errorDistribution") or {}).items()},
            offered_rps=offered_rps,
            slo_ms=slo_ms,
            ok_within_slo=None if slo_ms is None else int((ok_ms <= slo_ms).sum()),
            defaults=defaults,
            cache=cache,
        )

    @property
    def p99_ms(self) -> float:
        return self.latency_ms[99]

    @property
    def defaults_served(self) -> int | None:
        return None if self.defaults is None else sum(self.defaults.values())

    @property
    def within_slo(self) -> float | None:
        """Share of calls answered OK within the SLO, a default output counting as a miss
        (it is answered in time, but not by the models)."""
        if self.ok_within_slo is None or not self.calls:
            return None
        return max(0, self.ok_within_slo - (self.defaults_served or 0)) / self.calls

    @property
    def held(self) -> bool:
        """p99 within the SLO and at least HELD_SHARE of calls within it."""
        share = self.within_slo
        return (share is not None and self.slo_ms is not None
                and self.p99_ms <= self.slo_ms and share >= HELD_SHARE)

    def summary(self) -> str:
        """One line for a person: calls, rate, latency, errors, SLO share, defaults, cache."""
        lat = self.latency_ms
        line = (f"{self.name}: {self.calls} calls in {self.elapsed_s:.1f} s, {self.rps:.0f} rps"
                + (f" (offered {self.offered_rps:g})" if self.offered_rps else "")
                + f", mean {self.mean_ms:.2f} ms, p50 {lat[50]:.2f} ms, p90 {lat[90]:.2f} ms, "
                f"p99 {lat[99]:.2f} ms, errors {sum(self.errors.values())}")
        if self.errors:
            line += f" {json.dumps(self.errors)}: {json.dumps(self.error_messages)}"
        share = self.within_slo
        if share is not None:
            line += f"; within SLO {self.slo_ms:g} ms {share:.2%}"
        if self.defaults is not None:
            line += f"; defaults {self.defaults_served}"
            line += f" {json.dumps(self.defaults)}" if self.defaults else ""
        if self.cache is not None:
            line += f"; {self.cache.describe()}"
        return line

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON values (NaN, when no call was OK, as null)."""
        out = asdict(self)
        out["mean_ms"] = _finite(self.mean_ms)
        out["latency_ms"] = {str(p): _finite(v) for p, v in self.latency_ms.items()}
        out["within_slo"] = self.within_slo
        out["held"] = self.held
        out["cache_hit_ratio"] = None if self.cache is None else self.cache.hit_ratio
        return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
