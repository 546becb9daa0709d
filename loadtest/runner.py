"""One measured ghz run of a config: its inputs written, the frontend's counters read
before and after, ghz's report kept, and the result summed up."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest import inputs
from loadtest.frontend import FrontendCounters, cache_use, defaults_served, read_app
from loadtest.ghz import run_ghz
from loadtest.results import RunResult
from services.common.tls import ClientTLS

# Distinct inputs are written per run; a run of unknown length (closed loop for a
# duration) gets this many, and no run more (ghz holds them all in memory).
UNKNOWN_COUNT_ROWS = 100_000
MAX_ROWS = 200_000
GHZ_CONCURRENCY = 50  # ghz's default -c
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(text: str) -> float:
    """ghz's duration syntax, for the forms `500ms`, `30s`, `2m`, `1h`."""
    found = _DURATION.match(text.strip())
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"duration {text!r}: expected a number and ms, s, m or h (e.g. 30s)")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def workers(config: dict[str, Any], ghz_args: Sequence[str]) -> int:
    """ghz's concurrency: the last -c/--concurrency in `ghz_args`, else the config's."""
    found = int(config.get("concurrency", GHZ_CONCURRENCY))
    for i, arg in enumerate(ghz_args):
        flag, _, value = arg.partition("=")
        if flag in ("-c", "--concurrency"):
            value = value or (ghz_args[i + 1] if i + 1 < len(ghz_args) else "")
        elif arg.startswith("-c") and arg[2:].isdigit():
            value = arg[2:]
        else:
            continue
        found = int(value) if value.isdigit() else found
    return found


@dataclass(frozen=True)
class Load:
    """How ghz sends: `calls` (else the config's) from the config's workers, or for
    `duration`, each worker calling when its last call is answered (closed loop); or
    `rate` calls per second for `duration` (open loop)."""

    calls: int | None = None
    rate: float | None = None
    duration: str = ""

    def ghz_flags(self) -> list[str]:
        flags = ["-n", str(self.calls)] if self.calls else []
        flags += ["-z", self.duration] if self.duration else []
        # --async: each call goes at its time, whether earlier calls have answered or not.
        return flags + (["--rps", f"{self.rate:g}", "--async"] if self.rate else [])

    def timeout_s(self) -> float:
        """How long ghz may take before it is stopped."""
        return 600.0 + (duration_s(self.duration) if self.duration else 0.0)

    def expected_calls(self, config: dict[str, Any]) -> int:
        """How many calls ghz will make (distinct inputs to write)."""
        if self.rate and self.duration:
            count = math.ceil(self.rate * duration_s(self.duration) * 1.1) + 100
        elif self.duration:
            count = UNKNOWN_COUNT_ROWS
        else:
            count = self.calls or int(config.get("total", 0)) or UNKNOWN_COUNT_ROWS
        return min(count, MAX_ROWS)


@dataclass(frozen=True)
class Judging:
    """What a run of an application is judged by."""

    slo_ms: float | None
    models: int  # model answers asked for per query (0: unknown)
    no_slo: str  # why there is no SLO ("" when there is)


@dataclass
class Runner:
    """Runs configs against one target, with what every run shares."""

    ghz: str
    target: str
    results: Path
    distinct: bool = True
    app: str = ""  # replaces the configs' application name when set
    slo_ms: float | None = None  # else the application's record
    connections: int = 1
    tls: ClientTLS | None = None
    tls_flags: Sequence[str] = ()
    ghz_args: Sequence[str] = ()
    counters: FrontendCounters | None = None
    management_token: str = ""
    notes: list[str] = field(default_factory=list)
    _judging: dict[str, Judging] = field(default_factory=dict)

    def run(self, config_path: Path, load: Load, report_name: str) -> RunResult:
        config: dict[str, Any] = json.loads(config_path.read_text())
        app = self.app_of(config)
        data = self.results / f"{report_name}-inputs.bin"
        flags = [*self.tls_flags, *load.ghz_flags()]
        connections = min(self.connections, workers(config, self.ghz_args))
        if connections > 1:  # ghz needs a worker per connection at least
            flags += ["--connections", str(connections)]
        rows = load.expected_calls(config) if self.distinct else 1
        if self.distinct or self.app or config.get("call") in inputs.REQUESTS:
            # Raises ValueError for a call whose inputs cannot be varied (or renamed).
            inputs.write_requests(config, data, rows, self.app, self.distinct)
            flags += ["-B", str(data)]
        judging = self.judging(app)
        before = self.counters.snapshot() if self.counters else None
        report = run_ghz(self.ghz, config_path, self.target,
                         self.results / f"{report_name}.json", [*flags, *self.ghz_args],
                         timeout_s=load.timeout_s())
        data.unlink(missing_ok=True)
        delta = self.counters.since(before) if self.counters and before is not None else None
        result = RunResult.from_report(
            report, slo_ms=judging.slo_ms, offered_rps=load.rate,
            defaults=None if delta is None else defaults_served(delta, app),
            cache=None if delta is None else cache_use(delta, app, judging.models),
        )
        if self.distinct and result.calls > rows:
            self.notes.append(f"{report_name}: {result.calls} calls but {rows} distinct "
                              "inputs: later calls repeated inputs (and may hit the cache)")
        return result

    def app_of(self, config: dict[str, Any]) -> str:
        """The application the config's calls go to (--app, else the config's)."""
        return self.app or inputs.app_name(config)

    def judging(self, app: str) -> Judging:
        """The SLO (--slo-ms, else the application's record) and the models per query,
        read once per application."""
        if app not in self._judging:
            record, why = (None, "no application name") if not app else read_app(
                self.target, app, self.management_token, self.tls)
            slo_ms = self.slo_ms or (record.slo_ms if record else None)
            self._judging[app] = Judging(
                slo_ms, len(record.models) if record else 0,
                "" if slo_ms else f"no SLO for {app!r}: set SLO_MS= (--slo-ms), or "
                f"CLIPPER_MANAGEMENT_TOKEN to read the application's record ({why})")
            if not slo_ms:
                self.notes.append(self._judging[app].no_slo)
        return self._judging[app]
