"""`make run`: the whole mesh as local processes with embedded state, kept running.

Starts the selection service, the frontend on 127.0.0.1:1337 and `--replicas`
containers per example digits model, registers the application `digits` (all
models, majority vote), and prints how to query it. A process that exits is
restarted (services/mesh/supervisor.py); Ctrl-C or SIGTERM drains the mesh in order
(frontend, containers, selection service). The launcher exits 1 when the mesh did
not start, or when a service did not drain cleanly; a second Ctrl-C kills everything.

Plaintext by default. `--tls-ca/--tls-cert/--tls-key` run every channel over TLS
with those files (the one certificate, which must name 127.0.0.1 and allow both
server and client use, serves every service); `--tls-throwaway` makes such files
in `<state-dir>/tls/` first; `--mtls` also requires client certificates.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import grpc

from services.common.telemetry import setup_logging
from services.mesh import digits
from services.mesh.application import digits_apps, query_commands, register_apps
from services.mesh.options import MeshOptions, parse_args
from services.mesh.specs import (
    METRICS_URLS,
    SELECTION,
    MetricsPorts,
    client_tls,
    container_specs,
    frontend_spec,
    mesh_secret,
    selection_spec,
)
from services.mesh.supervisor import RestartPolicy, Supervisor

logger = logging.getLogger("mesh")
CHECK_INTERVAL_S = 0.1


def start_mesh(args: MeshOptions, supervisor: Supervisor, management_token: str,
               secret: str) -> tuple[str, list[str]]:
    """Train the example models if needed and start every service; the frontend address
    and the models served."""
    state = Path(args.state_dir)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    model_dir = state / "models"
    if not digits.trained(model_dir):
        logger.info("training the example digits models into %s", model_dir)
        subprocess.run([sys.executable, "-m", "services.mesh.digits", str(model_dir)],
                       check=True)
    models = digits.model_flags(model_dir)
    if digits.ONNX_MODEL not in models:
        logger.info("no ONNX example: onnxruntime and skl2onnx are not installed "
                    "(pip install -e '.[dev]')")
    metrics = MetricsPorts(state)
    selection = supervisor.start(selection_spec(args, secret, metrics))
    frontend = supervisor.start(frontend_spec(args, secret, management_token,
                                              selection.address, metrics))
    supervisor.start_all(container_specs(args, secret, frontend.address, models, metrics))
    metrics.write()
    return frontend.address, list(models)


def ready_banner(args: MeshOptions, address: str, selection: str, started: float,
                 management_token: str, models: list[str]) -> str:
    secret_path = Path(args.state_dir) / "mesh-secret"
    cli, grpcurl, label = query_commands(address, Path(args.state_dir) / "models",
                                         client_tls(args))
    containers = len(models) * args.replicas
    processes = args.replicas if args.cohost else containers
    urls = Path(args.state_dir) / METRICS_URLS
    top = ("top" if (address, str(urls)) == ("127.0.0.1:1337", ".run/" + METRICS_URLS)
           else f"--frontend {address} top --metrics-file {urls}")
    onnx = (f"\nThe ONNX model alone: the same query to the application {digits.ONNX_MODEL}.\n"
            if digits.ONNX_MODEL in models else "")
    return (f"\nMesh ready in {time.monotonic() - started:.1f} s: frontend on {address}"
            f" (selection on {selection}, {containers} model replicas in {processes} "
            f"container process{'es' if processes > 1 else ''})\n"
            f"Logs and state in {args.state_dir}/. A service that exits is restarted; "
            f"Ctrl-C stops everything.\n\n"
            f"Management token:  export CLIPPER_MANAGEMENT_TOKEN={management_token}\n"
            f"Token for a container of your own model NAME:\n  CLIPPER_MESH_SECRET="
            f"$(cat {secret_path}) {sys.executable} -m services.cli tokens container NAME\n\n"
            f"Query a test digit (true label {label}):\n  {cli}\n\nOr with grpcurl:\n"
            f"  {grpcurl}\n{onnx}\n"
            f"A live view of applications and models:\n  {sys.executable} -m services.cli {top}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__)
    setup_logging("mesh")
    started = time.monotonic()
    management_token = (os.environ.get("CLIPPER_MANAGEMENT_TOKEN")
                        or secrets.token_urlsafe(16))
    secret = mesh_secret(Path(args.state_dir) / "mesh-secret")
    supervisor = Supervisor(RestartPolicy(max_backoff_s=args.max_backoff_s,
                                          max_restarts_per_min=args.max_restarts_per_min))
    # Plain flags, not threading.Events: the handler runs in the main thread between two
    # bytecodes, possibly while that thread holds an Event's lock inside its wait, and
    # setting the Event would then wait on that lock for ever (the mesh never stopped).
    serving = stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        if stop or not serving:
            raise KeyboardInterrupt  # a second signal, or still starting: kill everything
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        try:
            address, models = start_mesh(args, supervisor, management_token, secret)
            register_apps(address, management_token, digits_apps(models), args.slo_ms,
                          len(models) * args.replicas, client_tls(args))
        except (RuntimeError, OSError, subprocess.CalledProcessError, grpc.RpcError) as exc:
            logger.error("the mesh did not start: %s", exc)
            supervisor.drain()
            return 1
        selection = supervisor.process(SELECTION)
        assert selection is not None
        print(ready_banner(args, address, selection.address, started, management_token,
                           models), flush=True)
        serving = True
        while not stop:
            supervisor.check()
            time.sleep(CHECK_INTERVAL_S)
        for name in supervisor.down:
            logger.error("%s was left down after too many restarts", name)
        clean = supervisor.drain()
        print("mesh stopped" + ("" if clean else ": some services did not drain (see above)"),
              flush=True)
        return 0 if clean else 1
    except KeyboardInterrupt:
        print("mesh killed", flush=True)
        return 1
    finally:
        supervisor.kill_all()  # nothing outlives the launcher (a no-op after a drain)


if __name__ == "__main__":
    sys.exit(main())
