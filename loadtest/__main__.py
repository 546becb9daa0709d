"""`make loadtest`: ghz against the frontend, for Predict and the OIP's ModelInfer.

Three modes, each run per config in loadtest/ (or --config):
  fixed count (default)   the config's calls (--calls) from its 32 workers, closed loop
  open loop               --rate R --duration D: R calls per second for D, each sent at
                          its time whatever the earlier ones are doing (ghz --rps --async)
  sweep                   --sweep 50:400:50: an open-loop run of --duration (10s) per
                          rate, a row per rate, and the highest rate that held its SLO

Every call sends a distinct input (the digits data set, each row made unique per run),
so answers come from the models, not the prediction cache; `--cache hot` sends the
config's one input, to measure the cache on purpose. The summary gives latency, errors
by status code, the share of calls answered within the application's SLO (read from
its record with CLIPPER_MANAGEMENT_TOKEN, or --slo-ms), defaults served and the cache
hit ratio (read from the frontends' metrics, --metrics URL).

With no `--target`, the local mesh on 127.0.0.1:1337 is used, and started when
nothing serves there (with its metrics on); it is stopped at the end. ghz's JSON
reports go to `--results`, a summary JSON beside each, and a sweep's PNG. Extra
arguments after `--` go to ghz. `--tls-ca FILE` dials with TLS (`--tls-cert`/
`--tls-key` for mTLS, `--tls-server-name` to verify another name).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from loadtest import sweep as sweeps
from loadtest.frontend import FrontendCounters
from loadtest.ghz import CONFIGS, tls_args
from loadtest.mesh import LocalMesh, serving, start_mesh
from loadtest.plot import plot_sweep
from loadtest.results import RunResult
from loadtest.runner import Load, Runner, duration_s
from services.common.tls import ClientTLS

LOCAL = "127.0.0.1:1337"
SWEEP_STEP = "10s"
TARGET_CONNECTIONS = 8  # calls spread over a deployment's frontend replicas


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ghz", default="ghz", help="the ghz binary")
    p.add_argument("--target", default="", help=f"frontend host:port (default: {LOCAL}, "
                   "started when nothing serves there)")
    p.add_argument("--results", default="loadtest-results", help="where reports go")
    p.add_argument("--config", action="append", type=Path,
                   help="a ghz config (repeatable; default: every config in loadtest/)")
    p.add_argument("--cache", choices=("distinct", "hot"), default="distinct",
                   help="distinct inputs (answers from the models), or the config's one "
                   "input (answers from the cache after the first)")
    p.add_argument("--app", default="", help="the application to call instead of the "
                   "configs' (digits)")
    p.add_argument("--calls", type=int, default=0, help="fixed-count mode: calls per config "
                   "(default: the config's)")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: calls per second")
    p.add_argument("--duration", default="", help="how long to send (30s, 2m); a sweep's "
                   f"per rate (default {SWEEP_STEP})")
    p.add_argument("--sweep", default="", help="rates to step through: 50,100,200 or "
                   "START:STOP:STEP")
    p.add_argument("--slo-ms", type=float, default=0.0,
                   help="the SLO to judge calls by (default: the application's)")
    p.add_argument("--connections", type=int, default=0,
                   help=f"connections ghz spreads calls over (default 1; "
                   f"{TARGET_CONNECTIONS} with --target; at most one per ghz worker)")
    p.add_argument("--metrics", action="append", default=[],
                   help="a frontend's Prometheus URL (repeatable or comma-separated: one "
                   "per frontend replica); default: the local mesh's")
    p.add_argument("--tls-ca", default="", help="dial with TLS, trusting this PEM CA")
    p.add_argument("--tls-cert", default="", help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    p.add_argument("--tls-server-name", default="",
                   help="name to verify in the server's certificate instead of the target host")
    p.add_argument("ghz_args", nargs="*", help="passed to ghz (after --)")
    args = p.parse_args(argv)
    if args.tls_ca and not args.target:
        p.error("--tls-ca needs --target (the local mesh `make loadtest` starts is plaintext)")
    try:
        args.rates = sweeps.parse_rates(args.sweep) if args.sweep else []
        if args.duration:
            duration_s(args.duration)
    except ValueError as e:
        p.error(str(e))
    if args.rate < 0 or args.calls < 0 or args.connections < 0 or args.slo_ms < 0:
        p.error("--rate, --calls, --connections and --slo-ms are >= 0")
    if args.rate and not args.duration:
        p.error("--rate needs --duration (e.g. --rate 200 --duration 30s)")
    if args.sweep and (args.rate or args.calls):
        p.error("--sweep chooses its rates: no --rate or --calls with it")
    args.metrics = [u for urls in args.metrics for u in urls.split(",") if u]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    target = args.target or LOCAL
    mesh: LocalMesh | None = None
    token = os.environ.get("CLIPPER_MANAGEMENT_TOKEN", "")
    if not args.target and not serving(target):
        print(f"nothing serves on {target}: starting the local mesh", flush=True)
        mesh = start_mesh(int(target.rsplit(":", 1)[1]), token)
        token = mesh.management_token
    metrics = args.metrics or ([mesh.metrics_url] if mesh else [])
    runner = Runner(
        ghz=args.ghz, target=target, results=Path(args.results),
        distinct=args.cache == "distinct", app=args.app, slo_ms=args.slo_ms or None,
        connections=args.connections or (TARGET_CONNECTIONS if args.target else 1),
        tls=tls, tls_flags=tls_args(args.tls_ca, args.tls_cert, args.tls_key,
                                    args.tls_server_name),
        ghz_args=args.ghz_args, counters=FrontendCounters(metrics) if metrics else None,
        management_token=token,
    )
    if not metrics:
        runner.notes.append("cache hits and defaults not measured: the frontend's metrics "
                            "are unknown (--metrics URL; the frontend serves them with "
                            "--metrics-port or CLIPPER_FRONTEND_METRICS_PORT)")
    try:
        configs = args.config or list(CONFIGS)
        failed = False
        for config in configs:
            if args.rates:
                run_sweep(runner, config, args.rates, args.duration or SWEEP_STEP)
            else:
                result = runner.run(config, Load(args.calls or None, args.rate or None,
                                                 args.duration), config.stem)
                write_summary(runner.results / f"{config.stem}.summary.json", result)
                print(result.summary(), flush=True)
                failed = failed or bool(result.errors)
        for note in runner.notes:
            print(f"note: {note}", flush=True)
        print(f"reports in {runner.results}/", flush=True)
        return 1 if failed else 0
    except ValueError as e:  # inputs that cannot be made distinct, a sweep with no SLO
        print(f"loadtest: {e}", file=sys.stderr)
        return 2
    finally:
        if mesh is not None:
            mesh.stop()


def run_sweep(runner: Runner, config: Path, rates: list[float], step: str) -> None:
    judging = runner.judging(runner.app_of(json.loads(config.read_text())))
    if judging.slo_ms is None:
        raise ValueError(f"{config.name}: a sweep judges each rate by the SLO: "
                         f"{judging.no_slo}")
    print(f"{config.stem}: sweep of {len(rates)} rates, {step} each, against "
          f"{runner.target}", flush=True)
    results = sweeps.sweep(runner, config, rates, step,
                           out=lambda line: print(line, flush=True))
    print(sweeps.verdict(results), flush=True)
    sweeps.write_report(runner.results / f"{config.stem}-sweep.json", config,
                        runner.target, results)
    png = plot_sweep(runner.results / f"{config.stem}-sweep.png", config.stem, results)
    if png is None:
        runner.notes.append("no plot: matplotlib is not installed (pip install -e '.[dev]')")


def write_summary(path: Path, result: RunResult) -> None:
    path.write_text(json.dumps(result.to_json(), indent=2))


if __name__ == "__main__":
    sys.exit(main())
