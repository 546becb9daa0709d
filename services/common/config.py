"""Flag defaults from `CLIPPER_<SERVICE>_<NAME>` environment variables, validated at start."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeVar

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
    """--grace-s, --metrics-port and --log-level, as every service has them."""
    p.add_argument("--grace-s", type=float,
                   default=env_default(service, "grace_s", 10.0, float),
                   help="on SIGTERM: how long in-flight work may take to finish")
    p.add_argument("--metrics-port", type=int,
                   default=env_default(service, "metrics_port", -1, int),
                   help="serve Prometheus metrics on this port (0: any free port; -1: off)")
    p.add_argument("--log-level", default=env_default(service, "log_level", "INFO", str),
                   help="logging level (DEBUG, INFO, WARNING, ERROR)")
