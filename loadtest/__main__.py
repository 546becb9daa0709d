"""`make loadtest`: ghz against the frontend, for Predict and the OIP's ModelInfer.

With no `--target`, the local mesh on 127.0.0.1:1337 is used, and started
(`python -m services.mesh`) when nothing serves there; it is stopped at the end.
Each config in loadtest/ runs in turn; ghz's JSON reports go to `--results`,
and a summary line per call is printed. Extra arguments after `--` go to ghz
(e.g. `-- -n 20000 -c 64 --connections 8`). `--tls-ca FILE` dials with TLS
(`--tls-cert`/`--tls-key` for mTLS, `--tls-server-name` to verify another name);
the configs say plaintext, which these flags override.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest.ghz import CONFIGS, errors, run_ghz, summary, tls_args

LOCAL = "127.0.0.1:1337"
MESH_READY = "Mesh ready"
MESH_START_S = 180.0


def serving(target: str, timeout_s: float = 2.0) -> bool:
    """Whether a gRPC health check at `target` answers SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_mesh(port: int) -> subprocess.Popen[str]:
    """`python -m services.mesh` on `port`; returns once it prints its ready line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.mesh", "--port", str(port)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert proc.stdout is not None
    give_up = threading.Timer(MESH_START_S, proc.terminate)  # ends a silent mesh too
    give_up.start()
    try:
        for line in proc.stdout:  # ends when the mesh exits
            if line.startswith(MESH_READY):
                print(line.rstrip(), flush=True)
                return proc
    finally:
        give_up.cancel()
    stop_mesh(proc)
    raise RuntimeError(f"the local mesh did not start within {MESH_START_S:.0f} s")


def stop_mesh(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ghz", default="ghz", help="the ghz binary")
    p.add_argument("--target", default="", help=f"frontend host:port (default: {LOCAL}, "
                   "started when nothing serves there)")
    p.add_argument("--results", default="loadtest-results", help="where ghz's reports go")
    p.add_argument("--config", action="append", type=Path,
                   help="a ghz config (repeatable; default: every config in loadtest/)")
    p.add_argument("--tls-ca", default="", help="dial with TLS, trusting this PEM CA")
    p.add_argument("--tls-cert", default="", help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    p.add_argument("--tls-server-name", default="",
                   help="name to verify in the server's certificate instead of the target host")
    p.add_argument("ghz_args", nargs="*", help="passed to ghz (after --)")
    args = p.parse_args(argv)
    tls = tls_args(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    if tls and not args.target:
        p.error("--tls-ca needs --target (the local mesh `make loadtest` starts is plaintext)")
    target = args.target or LOCAL
    mesh = None
    if not args.target and not serving(target):
        print(f"nothing serves on {target}: starting the local mesh", flush=True)
        mesh = start_mesh(int(target.rsplit(":", 1)[1]))
    try:
        results = Path(args.results)
        configs = args.config or list(CONFIGS)
        failed = False
        for config in configs:
            report = run_ghz(args.ghz, config, target, results / f"{config.stem}.json",
                             [*tls, *args.ghz_args])
            print(summary(report), flush=True)
            failed = failed or bool(errors(report))
        print(f"reports in {results}/", flush=True)
        return 1 if failed else 0
    finally:
        if mesh is not None:
            stop_mesh(mesh)


if __name__ == "__main__":
    sys.exit(main())
