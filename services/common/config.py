"""Flag defaults from `CLIPPER_<SERVICE>_<NAME>` environment variables, validated at start."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeVar

from services.common.tls import ClientTLS, ServerTLS

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and its value."""


def env_default(service: str, name: str, default: T, parse: Callable[[str], T]) -> T:
    """The value of CLIPPER_<SERVICE>_<NAME> parsed with `parse`, else `default`."""
    var = env_name(service, name)
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not valid: {exc}") from exc


def env_name(service: str, name: str) -> str:
    return f"CLIPPER_{service}_{name}".upper().replace("-", "_")


def require(condition: bool, message: str) -> None:
    """Fail fast with a ConfigError when a setting is out of range."""
    if not condition:
        raise ConfigError(message)


def add_listen_flags(p: argparse.ArgumentParser, service: str, default_port: int) -> None:
    """--host and --port, as every service has them."""
    p.add_argument("--host", default=env_default(service, "host", "127.0.0.1", str),
                   help="address to listen on (0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=env_default(service, "port", default_port, int),
                   help="gRPC port (0: any free port, logged and printed at start)")


def add_lifecycle_flags(p: argparse.ArgumentParser, service: str) -> None:
    """--grace-s, --metrics-port, --log-level and --log-format, as every service has them."""
    p.add_argument("--grace-s", type=float,
                   default=env_default(service, "grace_s", 10.0, float),
                   help="on SIGTERM: how long in-flight work may take to finish")
    p.add_argument("--metrics-port", type=int,
                   default=env_default(service, "metrics_port", -1, int),
                   help="serve Prometheus metrics on this port (0: any free port; -1: off)")
    p.add_argument("--log-level", default=env_default(service, "log_level", "INFO", str),
                   help="logging level (DEBUG, INFO, WARNING, ERROR)")
    p.add_argument("--log-format", choices=("text", "json"),
                   default=env_default(service, "log_format", "text", str),
                   help="text lines, or JSON lines: one object per event with the service, and "
                   "for a query its id, application and trace id")


def add_tls_flags(p: argparse.ArgumentParser, service: str, server: bool = True,
                  client: bool = True) -> None:
    """TLS flags: serving (--tls-cert, --tls-key, --tls-client-ca, --health-port) and
    dialling (--tls-ca, --tls-client-cert, --tls-client-key). Plaintext when unset."""
    def env(name: str) -> str:
        return env_default(service, name, "", str)

    if server:
        p.add_argument("--tls-cert", default=env("tls_cert"),
                       help="serve TLS with this PEM certificate chain (re-read when it changes)")
        p.add_argument("--tls-key", default=env("tls_key"),
                       help="PEM private key of --tls-cert")
        p.add_argument("--tls-client-ca", default=env("tls_client_ca"),
                       help="require client certificates signed by this PEM CA (mTLS)")
        p.add_argument("--health-port", type=int,
                       default=env_default(service, "health_port", -1, int),
                       help="also serve only gRPC health checks, in plaintext, on this port "
                       "(for probes that cannot do TLS; 0: any free port; -1: off)")
    if client:
        p.add_argument("--tls-ca", default=env("tls_ca"),
                       help="dial with TLS, trusting servers signed by this PEM CA")
        p.add_argument("--tls-client-cert", default=env("tls_client_cert"),
                       help="PEM certificate this service presents when it dials (mTLS)")
        p.add_argument("--tls-client-key", default=env("tls_client_key"),
                       help="PEM private key of --tls-client-cert")


def _require_files(*pairs: tuple[str, str]) -> None:
    for flag, path in pairs:
        require(not path or os.path.isfile(path), f"{flag}={path}: no such file")


def server_tls_from(args: argparse.Namespace) -> ServerTLS | None:
    """The server TLS settings of `add_tls_flags`, checked; None for plaintext."""
    require(bool(args.tls_cert) == bool(args.tls_key),
            "--tls-cert and --tls-key go together (both or neither)")
    require(not args.tls_client_ca or bool(args.tls_cert),
            "--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    _require_files(("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                   ("--tls-client-ca", args.tls_client_ca))
    if not args.tls_cert:
        return None
    return ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca)


def client_tls_from(args: argparse.Namespace, server_name: str = "") -> ClientTLS:
    """The client TLS settings of `add_tls_flags`, checked (`enabled` False: plaintext)."""
    require(bool(args.tls_client_cert) == bool(args.tls_client_key),
            "--tls-client-cert and --tls-client-key go together (both or neither)")
    require(not args.tls_client_cert or bool(args.tls_ca),
            "--tls-client-cert (mTLS) needs --tls-ca")
    _require_files(("--tls-ca", args.tls_ca), ("--tls-client-cert", args.tls_client_cert),
                   ("--tls-client-key", args.tls_client_key))
    return ClientTLS(args.tls_ca, args.tls_client_cert, args.tls_client_key, server_name)
