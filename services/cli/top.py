"""`python -m services.cli top`: the mesh at a glance, redrawn every second.

Each frame reads the frontend's Management API (applications and their SLO; each
model's replicas: connected of known, the queue depth each reports, the queries in
flight to them) and every `--metrics` URL, frontends' and containers' `/metrics`
(services/common/metrics.py; without --metrics, those `make run` listed in
.run/metrics-urls). Per application: queries, defaults and misses (not
answered by the models: a default, shed, refused or failed, as the SLO alerts count
them) since the frontends started, and over the last interval the rate and latency
p50/p99; per model: the mean batch size over the last interval, from its containers
(by the model label of a process serving several, else by its target_info). `--once`
prints one frame, measured over one interval, and exits. Figures a source did not give
show as `-`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.metrics import MODEL_METRIC_LABEL, Samples, read_metrics, sample
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

CLEAR = "\x1b[H\x1b[2J"
QUERIES = "clipper_queries_total"
LATENCY_BUCKETS = "clipper_query_duration_milliseconds_bucket"
DEFAULTS = "clipper_defaults_total"
BATCH_SUM, BATCH_COUNT = "clipper_batch_size_sum", "clipper_batch_size_count"
MODEL_LABEL = "clipper_model"  # target_info label of a container (MODEL_ATTRIBUTE)


def add_command(sub: Any) -> None:
    top = sub.add_parser("top", help="a live view of applications and models")
    top.add_argument("--metrics", action="append", default=[], metavar="URL",
                     help="a frontend's or container's /metrics URL (repeat for each)")
    top.add_argument("--metrics-file", default=".run/metrics-urls", metavar="PATH",
                     help="without --metrics: the URLs listed in this file, one per line "
                     "(make run writes it)")
    top.add_argument("--interval-s", type=float, default=1.0, help="time between frames")
    top.add_argument("--once", action="store_true", help="print one frame and exit")


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    applications: Sequence[pb.Application]
    replicas: Sequence[pb.Replica]
    metrics: dict[str, Samples]  # by URL; an unreachable URL is absent
    errors: dict[str, str]  # URL -> why it could not be read


def snapshot(mgmt: pb_grpc.ManagementStub, urls: Sequence[str], kw: dict[str, Any]) -> Snapshot:
    metrics: dict[str, Samples] = {}
    errors: dict[str, str] = {}
    for url in urls:
        try:
            metrics[url] = read_metrics(url, timeout_s=min(kw["timeout"], 5.0))
        except (OSError, ValueError) as exc:  # URLError is an OSError
            errors[url] = str(getattr(exc, "reason", exc))
    apps = mgmt.ListApplications(pb.ListApplicationsRequest(), **kw).applications
    replicas = mgmt.ListReplicas(pb.ListReplicasRequest(), **kw).replicas
    return Snapshot(time.monotonic(), apps, replicas, metrics, errors)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts {upper bound: count}, interpolated
    within its bucket as Prometheus' histogram_quantile does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def _frontends(s: Snapshot) -> list[Samples]:
    return [m for m in s.metrics.values() if any(n == QUERIES for n, _, _ in m)]


def _total(s: Snapshot, name: str, **labels: str) -> float:
    return sum(sample(m, name, **labels) for m in _frontends(s))


def _buckets(s: Snapshot, application: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for m in _frontends(s):
        for name, labels, value in m:
            if name == LATENCY_BUCKETS and labels.get("application") == application:
                bound = float(labels["le"])
                out[bound] = out.get(bound, 0.0) + value
    return out


def _containers(s: Snapshot) -> dict[str, tuple[float, float]]:
    """model -> (batch size sum, batches) over its containers: by each batch metric's
    model label in a process serving several models, else by its target_info's model."""
    out: dict[str, tuple[float, float]] = {}
    for m in s.metrics.values():
        # A process serving one model: the model its target_info names.
        named = next((labels.get(MODEL_LABEL) for name, labels, _ in m
                      if name == "target_info" and labels.get(MODEL_LABEL)), None)
        for name, labels, value in m:
            model = labels.get(MODEL_METRIC_LABEL) or named
            if model and name in (BATCH_SUM, BATCH_COUNT):
                total, count = out.get(model, (0.0, 0.0))
                out[model] = ((total + value, count) if name == BATCH_SUM
                              else (total, count + value))
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def application_rows(prev: Snapshot, now: Snapshot) -> list[list[str]]:
    dt = max(now.at - prev.at, 1e-9)
    measured = bool(_frontends(now))
    rows = []
    for app in sorted(now.applications, key=lambda a: a.name):
        name = app.name
        queries = _total(now, QUERIES, application=name)
        answered = _total(now, QUERIES, application=name, outcome="answered")
        earlier = _buckets(prev, name)
        window = {b: c - earlier.get(b, 0.0) for b, c in _buckets(now, name).items()}
        rate = (queries - _total(prev, QUERIES, application=name)) / dt
        figures = [f"{queries:.0f}", f"{rate:.1f}", _fmt(quantile(0.5, window)),
                   _fmt(quantile(0.99, window)),
                   f"{_total(now, DEFAULTS, application=name):.0f}",
                   f"{queries - answered:.0f}"]
        rows.append([name, str(app.slo_ms), *(figures if measured else ["-"] * 6)])
    return rows


def model_rows(prev: Snapshot, now: Snapshot) -> list[list[str]]:
    before, after = _containers(prev), _containers(now)
    by_model: dict[str, list[pb.Replica]] = {}
    for replica in now.replicas:
        by_model.setdefault(replica.model, []).append(replica)
    rows = []
    for model in sorted(set(by_model) | set(after)):
        replicas = by_model.get(model, [])
        total, count = after.get(model, (0.0, 0.0))
        total_before, count_before = before.get(model, (0.0, 0.0))
        batches = count - count_before
        batch = (total - total_before) / batches if batches > 0 else None
        rows.append([model, f"{sum(r.connected for r in replicas)}/{len(replicas)}",
                     str(sum(r.queue_depth for r in replicas)),
                     str(sum(r.outstanding for r in replicas)), _fmt(batch)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in [header, *rows]]


def render(frontend: str, prev: Snapshot, now: Snapshot) -> str:
    lines = [f"clipper top  {frontend}  {time.strftime('%H:%M:%S')}  "
             f"(rates and percentiles over the last {now.at - prev.at:.1f} s)", ""]
    lines += _table(["APPLICATION", "SLO_MS", "QUERIES", "Q/S", "P50_MS", "P99_MS",
                     "DEFAULTS", "MISSED"], application_rows(prev, now))
    lines.append("")
    lines += _table(["MODEL", "REPLICAS", "QUEUE", "IN_FLIGHT", "BATCH"],
                    model_rows(prev, now))
    notes = [f"{url}: unreadable ({why})" for url, why in now.errors.items()]
    if not _frontends(now):
        notes.append("no frontend metrics: give --metrics http://HOST:PORT/metrics "
                     "(the frontend's --metrics-port)")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def metrics_from_file(path: str) -> list[str]:
    """The URLs listed in `path`, one per line; none when it does not exist."""
    try:
        with open(path) as listed:
            return [line.strip() for line in listed if line.strip()]
    except FileNotFoundError:
        return []


def run(frontend: str, mgmt: pb_grpc.ManagementStub, args: argparse.Namespace,
        kw: dict[str, Any]) -> int:
    """Print frames until interrupted (one with --once, whose Management errors raise)."""
    if args.interval_s <= 0:
        print(f"error: --interval-s must be above 0, not {args.interval_s}", file=sys.stderr)
        return 2
    urls = args.metrics or metrics_from_file(args.metrics_file)
    prev: Snapshot | None = None
    try:
        while True:
            try:
                now = snapshot(mgmt, urls, kw)
            except grpc.RpcError as exc:
                if args.once:
                    raise
                print(f"{CLEAR}error: {exc.code().name}: {exc.details()}", flush=True)
                prev = None
            else:
                if prev is not None:
                    if args.once:
                        print(render(frontend, prev, now), end="")
                        return 0
                    print(CLEAR + render(frontend, prev, now), end="", flush=True)
                prev = now
            time.sleep(args.interval_s)
    except KeyboardInterrupt:
        return 0
