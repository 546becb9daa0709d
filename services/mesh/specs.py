"""What `make run` starts: each service's command, credentials, log and drain stage."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.common.credentials import container_token, selection_token
from services.common.processes import free_port
from services.common.tls import ClientTLS
from services.mesh.options import MeshOptions
from services.mesh.supervisor import ServiceSpec
from services.model_container import MEMBER_SEPARATOR

# Drain order: the frontend stops taking queries, containers finish their queues,
# and the selection service, which in-flight queries may still ask, goes last.
FRONTEND_STAGE, CONTAINER_STAGE, SELECTION_STAGE = 0, 1, 2
SELECTION, FRONTEND = "selection", "frontend"
# Where the launcher lists every service's /metrics URL, one per line, for
# `python -m services.cli top`.
METRICS_URLS = "metrics-urls"


def client_tls(args: MeshOptions) -> ClientTLS:
    """How the launcher (and the printed commands) dial the frontend."""
    if not args.tls_ca:
        return ClientTLS()
    return ClientTLS(args.tls_ca, args.tls_cert, args.tls_key) if args.mtls else ClientTLS(
        args.tls_ca)


def tls_flags(args: MeshOptions, serve: bool, dial: bool) -> list[str]:
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


class MetricsPorts:
    """A /metrics port for each service, chosen once (a restarted service keeps it), and
    the list of their URLs in <state-dir>/metrics-urls."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / METRICS_URLS
        self.urls: list[str] = []

    def flags(self) -> list[str]:
        port = free_port()
        self.urls.append(f"http://127.0.0.1:{port}/metrics")
        return ["--metrics-port", str(port)]

    def write(self) -> None:
        self.path.write_text("".join(f"{url}\n" for url in self.urls))


def selection_spec(args: MeshOptions, secret: str, metrics: MetricsPorts) -> ServiceSpec:
    """The selection service, on the same port after a restart, with its state file."""
    state = Path(args.state_dir)
    return ServiceSpec(
        SELECTION, "services.selection",
        ["--state", str(state / "selection-state.json"), "--grace-s", str(args.grace_s),
         *metrics.flags(), *tls_flags(args, serve=True, dial=False)],
        stage=SELECTION_STAGE,
        env={"CLIPPER_SELECTION_TOKEN": selection_token(secret)},
        log_path=state / "logs" / "selection.log", keep_port=True, grace_s=args.grace_s,
    )


def frontend_spec(args: MeshOptions, secret: str, management_token: str,
                  selection_address: str, metrics: MetricsPorts) -> ServiceSpec:
    """The frontend on `--port` (the port it bound first, after a restart)."""
    state = Path(args.state_dir)
    return ServiceSpec(
        FRONTEND, "services.frontend",
        ["--selection", selection_address, "--state", str(state / "frontend-state.json"),
         "--grace-s", str(args.grace_s), *metrics.flags(),
         *tls_flags(args, serve=True, dial=True)],
        stage=FRONTEND_STAGE,
        env={"CLIPPER_MANAGEMENT_TOKEN": management_token, "CLIPPER_MESH_SECRET": secret},
        log_path=state / "logs" / "frontend.log", port=args.port, keep_port=True,
        grace_s=args.grace_s,
    )


def container_specs(args: MeshOptions, secret: str, frontend_address: str,
                    models: dict[str, list[str]], metrics: MetricsPorts) -> list[ServiceSpec]:
    """`--replicas` containers of each example model (name -> the flags that load it),
    each with its model's token only; any free port (a replacement announces its new
    address). With `--cohost`, one process per replica serves every model, with every
    model's token (services/model_container/config.configs_from_args)."""
    logs = Path(args.state_dir) / "logs"

    def member(name: str) -> list[str]:
        return [*models[name], "--name", name, "--version", "1", "--frontend",
                frontend_address, *tls_flags(args, serve=False, dial=True)]

    def spec(label: str, names: list[str]) -> ServiceSpec:
        flags = [*member(names[0]), "--grace-s", str(args.grace_s), *metrics.flags(),
                 *tls_flags(args, serve=True, dial=False)]  # the process's, with the first
        for name in names[1:]:
            flags += [MEMBER_SEPARATOR, *member(name)]
        return ServiceSpec(
            label, "services.model_container", flags,
            stage=CONTAINER_STAGE,
            env={"CLIPPER_CONTAINER_TOKEN": ",".join(container_token(secret, name)
                                                     for name in names)},
            log_path=logs / f"{label}.log", grace_s=args.grace_s,
        )

    if args.cohost:
        return [spec(f"models-{i}", list(models)) for i in range(args.replicas)]
    return [spec(f"{name}-{i}", [name]) for name in models for i in range(args.replicas)]
