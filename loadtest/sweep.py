"""Sweep mode: open-loop runs at rising rates, a row per rate, and the highest rate
that held (p99 within the SLO, at least 99.9% of calls answered within it)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.results import HELD_SHARE, RunResult
from loadtest.runner import Load, Runner

WARMUP = "2s"  # one run at the first rate first, not reported (connections, code paths)
STOP_AFTER_MISSES = 2  # rates in a row that did not hold end the sweep
MAX_STEPS = 50


def parse_rates(text: str) -> list[float]:
    """`50,100,200` or `START:STOP:STEP` (`50:400:50`), in calls per second."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError
            rates = [start + i * step for i in range(int((stop - start) / step + 1e-9) + 1)]
        else:
            rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        rates = []
    if not rates or any(r <= 0 or not math.isfinite(r) for r in rates) or len(rates) > MAX_STEPS:
        raise ValueError(f"sweep {text!r}: expected rates like 50,100,200 or 50:400:50 "
                         f"(positive, at most {MAX_STEPS} steps)")
    return sorted(rates)


def sweep(runner: Runner, config: Path, rates: list[float], step: str,
          out: Callable[[str], None] = print) -> list[RunResult]:
    """One open-loop run of `step` per rate, lowest first; stops after STOP_AFTER_MISSES
    rates in a row that did not hold."""
    runner.run(config, Load(rate=rates[0], duration=WARMUP), f"{config.stem}-warmup")
    results: list[RunResult] = []
    misses = 0
    out(header())
    for rate in rates:
        result = runner.run(config, Load(rate=rate, duration=step), f"{config.stem}-{rate:g}rps")
        results.append(result)
        out(row(result))
        misses = 0 if result.held else misses + 1
        if misses >= STOP_AFTER_MISSES and rate != rates[-1]:
            out(f"  ({misses} rates in a row did not hold: higher rates skipped)")
            break
    return results


def held_rate(results: list[RunResult]) -> RunResult | None:
    """The run at the highest rate that held, if any."""
    held = [r for r in results if r.held and r.offered_rps]
    return max(held, key=lambda r: r.offered_rps or 0.0) if held else None


def verdict(results: list[RunResult]) -> str:
    best = held_rate(results)
    slo = results[0].slo_ms if results else None
    if best is None:
        return (f"held: no rate (none had p99 <= SLO {slo:g} ms with >= {HELD_SHARE:.1%} "
                "within it)" if slo else "held: unknown (no SLO: set SLO_MS=)")
    return (f"held: {best.offered_rps:g} q/s (p99 {best.p99_ms:.1f} ms <= SLO {slo:g} ms, "
            f"{best.within_slo:.2%} within it)")


def header() -> str:
    return (f"{'rate':>7} {'achieved':>8} {'p50 ms':>8} {'p99 ms':>8} {'in SLO':>8} "
            f"{'defaults':>8} {'cache':>6}  errors")


def row(r: RunResult) -> str:
    share = "-" if r.within_slo is None else f"{r.within_slo:.2%}"
    defaults = "-" if r.defaults_served is None else str(r.defaults_served)
    cache = "-" if r.cache is None else f"{r.cache.hit_ratio:.3f}"
    errors = ", ".join(f"{code} {n}" for code, n in sorted(r.errors.items())) or "-"
    return (f"{r.offered_rps or 0:>7g} {r.rps:>8.1f} {r.latency_ms[50]:>8.2f} {r.p99_ms:>8.2f} "
            f"{share:>8} {defaults:>8} {cache:>6}  {errors}")


def write_report(path: Path, config: Path, target: str, results: list[RunResult]) -> None:
    """The sweep as JSON: every rate's figures and the rate that held."""
    best = held_rate(results)
    report: dict[str, Any] = {
        "config": config.name, "target": target,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "slo_ms": results[0].slo_ms if results else None, "held_share": HELD_SHARE,
        "held_rps": best.offered_rps if best else None,
        "steps": [r.to_json() for r in results],
    }
    path.write_text(json.dumps(report, indent=2))
