"""`make run`: the whole mesh as local processes with embedded state, until Ctrl-C.

Starts the selection service, the frontend on 127.0.0.1:1337 and one container
per example digits model, registers the application `digits` (all models,
majority vote), checks one query end to end, and prints how to query it.

Plaintext by default. `--tls-ca/--tls-cert/--tls-key` run every channel over TLS
with those files (the one certificate, which must name 127.0.0.1 and allow both
server and client use, serves every service); `--tls-throwaway` makes such files
in `<state-dir>/tls/` first; `--mtls` also requires client certificates.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from services.common.auth import bearer
from services.common.credentials import container_token, selection_token
from services.common.processes import ServiceProcess, start_service
from services.common.telemetry import setup_logging
from services.common.tensors import encode
from services.common.tls import ClientTLS, sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits

logger = logging.getLogger("mesh")
APP = "digits"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.mesh", description=__doc__)
    p.add_argument("--port", type=int, default=1337, help="frontend port (0: any free port)")
    p.add_argument("--state-dir", default=".run", help="state files, trained models and logs")
    p.add_argument("--replicas", type=int, default=1, help="replicas per model")
    p.add_argument("--slo-ms", type=int, default=100)
    p.add_argument("--tls-ca", default="", help="TLS on every channel: the CA file")
    p.add_argument("--tls-cert", default="", help="certificate every service serves and "
                   "presents (names 127.0.0.1, server and client use)")
    p.add_argument("--tls-key", default="", help="key of --tls-cert")
    p.add_argument("--tls-throwaway", action="store_true",
                   help="make a throwaway CA and certificate in <state-dir>/tls/ and use them")
    p.add_argument("--mtls", action="store_true", help="with TLS: require client certificates")
    args = p.parse_args()
    if args.tls_throwaway:
        from services.mesh.certs import make_ca, make_leaf

        try:
            import cryptography  # noqa: F401
        except ImportError:
            p.error("--tls-throwaway needs the cryptography package (pip install -e '.[dev]')")
        tls_dir = Path(args.state_dir) / "tls"
        ca = make_ca(tls_dir, "ca", days=7)
        leaf = make_leaf(tls_dir, "mesh", ca, days=7)
        args.tls_ca, args.tls_cert, args.tls_key = str(ca.cert), str(leaf.cert), str(leaf.key)
    if not all((args.tls_ca, args.tls_cert, args.tls_key)) and any(
            (args.tls_ca, args.tls_cert, args.tls_key, args.mtls)):
        p.error("TLS needs --tls-ca, --tls-cert and --tls-key (or --tls-throwaway)")
    return args


def client_tls(args: argparse.Namespace) -> ClientTLS:
    """How the launcher (and the printed commands) dial the frontend."""
    if not args.tls_ca:
        return ClientTLS()
    return ClientTLS(args.tls_ca, args.tls_cert, args.tls_key) if args.mtls else ClientTLS(
        args.tls_ca)


def tls_flags(args: argparse.Namespace, serve: bool, dial: bool) -> list[str]:
    """The TLS flags of one service: serving, dialling, or both; none for plaintext."""
    if not args.tls_ca:
        return []
    flags = []
    if serve:
        flags += ["--tls-cert", args.tls_cert, "--tls-key", args.tls_key]
        flags += ["--tls-client-ca", args.tls_ca] if args.mtls else []
    if dial:
        flags += ["--tls-ca", args.tls_ca]
        flags += ["--tls-client-cert", args.tls_cert, "--tls-client-key", args.tls_key
                  ] if args.mtls else []
    return flags


def service_env(management_token: str, mesh_secret: str) -> dict[str, dict[str, str]]:
    """Each service's credentials, all derived from the mesh secret but the management
    token: the frontend holds the secret, the selection service its own token, and
    each container the token of its model only."""
    env = {
        "services.frontend": {"CLIPPER_MANAGEMENT_TOKEN": management_token,
                              "CLIPPER_MESH_SECRET": mesh_secret},
        "services.selection": {"CLIPPER_SELECTION_TOKEN": selection_token(mesh_secret)},
    }
    for name in digits.MODEL_NAMES:
        env[name] = {"CLIPPER_CONTAINER_TOKEN": container_token(mesh_secret, name)}
    return env


def mesh_secret(path: Path) -> str:
    """CLIPPER_MESH_SECRET, else the one kept in `path` (made once, readable by its owner
    only), so that tokens of containers started by hand survive a restart of the mesh."""
    secret = os.environ.get("CLIPPER_MESH_SECRET", "")
    if secret:
        return secret
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def start_mesh(args: argparse.Namespace, env: dict[str, dict[str, str]],
               procs: list[ServiceProcess]) -> None:
    """Start every service, appending each to `procs` as soon as it runs (for cleanup)."""
    state = Path(args.state_dir)
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model_dir = state / "models"
    model_paths = digits.model_paths(model_dir)
    if not all(p.exists() for p in model_paths.values()) or not digits.sample_path(
        model_dir
    ).exists():
        logger.info("training the example digits models into %s", model_dir)
        subprocess.run([sys.executable, "-m", "services.mesh.digits", str(model_dir)],
                       check=True)
    selection = start_service(
        "services.selection",
        ["--port", "0", "--state", str(state / "selection-state.json"),
         *tls_flags(args, serve=True, dial=False)],
        env=env["services.selection"], log_path=logs / "selection.log",
    )
    procs.append(selection)
    frontend = start_service(
        "services.frontend",
        ["--port", str(args.port), "--selection", selection.address,
         "--state", str(state / "frontend-state.json"), *tls_flags(args, serve=True, dial=True)],
        env=env["services.frontend"], log_path=logs / "frontend.log",
    )
    procs.append(frontend)
    containers = [(name, path, i) for name, path in model_paths.items()
                  for i in range(args.replicas)]

    def start_container(spec: tuple[str, Path, int]) -> None:
        name, path, i = spec
        procs.append(start_service(
            "services.model_container",
            ["--model", str(path), "--name", name, "--version", "1",
             "--frontend", frontend.address, "--input-dtype", digits.INPUT_DTYPE,
             "--input-shape", ",".join(map(str, digits.INPUT_SHAPE)),
             *tls_flags(args, serve=True, dial=True)],
            name=f"{name}-{i}", env=env[name], log_path=logs / f"{name}-{i}.log",
        ))

    with ThreadPoolExecutor(max_workers=len(containers)) as pool:
        list(pool.map(start_container, containers))


def register_app(address: str, token: str, models: list[str], slo_ms: int,
                 expected_replicas: int, tls: ClientTLS | None = None) -> None:
    """Create the digits application if it is new, and wait for every replica to connect."""
    channel = sync_channel(address, tls)
    mgmt = pb_grpc.ManagementStub(channel)
    md = bearer(token)
    existing = {a.name for a in mgmt.ListApplications(pb.ListApplicationsRequest(),
                                                      metadata=md, timeout=5).applications}
    if APP not in existing:
        app = pb.Application(
            name=APP,
            input_spec=pb.TensorSpec(dtype=digits.INPUT_DTYPE, shape=list(digits.INPUT_SHAPE)),
            slo_ms=slo_ms,
            policy="all",
            linked_models=models,
            default_output=encode(np.int64(-1)),
        )
        mgmt.CreateApplication(pb.ApplicationRequest(application=app), metadata=md, timeout=5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        replicas = mgmt.ListReplicas(pb.ListReplicasRequest(), metadata=md, timeout=5).replicas
        if sum(r.connected for r in replicas) >= expected_replicas:
            break
        time.sleep(0.05)
    channel.close()


def query_commands(address: str, model_dir: Path,
                   tls: ClientTLS | None = None) -> tuple[str, str, int]:
    """A ready-to-paste query (our CLI and grpcurl) for one test digit, and its label."""
    saved = json.loads(digits.sample_path(model_dir).read_text())
    sample = np.array(saved["values"], dtype=np.float32)
    values = ",".join(str(int(v)) for v in sample)
    cli_tls, grpcurl_tls = "", "-plaintext"
    if tls is not None and tls.enabled:
        cli_tls = f" --tls-ca {tls.ca}" + (f" --tls-cert {tls.cert} --tls-key {tls.key}"
                                           if tls.cert else "")
        grpcurl_tls = f"-cacert {tls.ca}" + (f" -cert {tls.cert} -key {tls.key}"
                                             if tls.cert else "")
    cli = (f"{sys.executable} -m services.cli --frontend {address}{cli_tls} predict {APP} "
           f"--values {values}")
    raw = base64.b64encode(sample.astype("<f4").tobytes()).decode()
    body = json.dumps({"application": APP,
                       "input": {"dtype": "float32", "shape": [64], "raw": raw}})
    grpcurl = f"grpcurl {grpcurl_tls} -d '{body}' {address} clipper.v1.Frontend/Predict"
    return cli, grpcurl, int(saved["label"])


def main() -> int:
    args = parse_args()
    setup_logging("mesh")
    started = time.monotonic()
    management_token = (os.environ.get("CLIPPER_MANAGEMENT_TOKEN")
                        or secrets.token_urlsafe(16))
    secret_path = Path(args.state_dir) / "mesh-secret"
    env = service_env(management_token, mesh_secret(secret_path))
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    procs: list[ServiceProcess] = []
    try:
        start_mesh(args, env, procs)
        frontend = procs[1]
        models = list(digits.MODEL_NAMES)
        register_app(frontend.address, management_token, models, args.slo_ms,
                     len(models) * args.replicas, client_tls(args))
        cli, grpcurl, label = query_commands(frontend.address, Path(args.state_dir) / "models",
                                             client_tls(args))
        print(f"\nMesh ready in {time.monotonic() - started:.1f} s: frontend on {frontend.address}"
              f" (selection on {procs[0].address}, {len(procs) - 2} model containers)\n"
              f"Logs and state in {args.state_dir}/. Ctrl-C stops everything.\n\n"
              f"Management token:  export CLIPPER_MANAGEMENT_TOKEN={management_token}\n"
              f"Token for a container of your own model NAME:\n  CLIPPER_MESH_SECRET="
              f"$(cat {secret_path}) {sys.executable} -m services.cli tokens container NAME\n\n"
              f"Query a test digit (true label {label}):\n  {cli}\n\nOr with grpcurl:\n"
              f"  {grpcurl}\n", flush=True)
        while not stop and all(p.proc.poll() is None for p in procs):
            time.sleep(0.2)
        for p in procs:
            if p.proc.poll() is not None:
                logger.error("%s exited with %s; stopping the mesh", p.name, p.proc.returncode)
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
