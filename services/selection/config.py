"""Settings of the selection service (flags, with CLIPPER_SELECTION_* env defaults)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from services.common.config import env_default

SERVICE = "selection"


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    state: str
    metrics_port: int
    grace_s: float
    log_level: str


def build_parser() -> argparse.ArgumentParser:
    """The flags, with defaults read from the environment now."""
    p = argparse.ArgumentParser(prog="python -m services.selection")
    p.add_argument("--host", default=env_default(SERVICE, "host", "127.0.0.1", str),
                   help="address to listen on (0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=env_default(SERVICE, "port", 1338, int),
                   help="gRPC port (0: any free port, logged and printed at start)")
    p.add_argument(
        "--state",
        default=env_default(SERVICE, "state", ".run/selection-state.json", str),
        help="policy state per application and context: an embedded file path, "
        "or redis://HOST:PORT/DB shared by several selection replicas",
    )
    p.add_argument("--grace-s", type=float,
                   default=env_default(SERVICE, "grace_s", 10.0, float),
                   help="on SIGTERM: how long in-flight work may take to finish")
    p.add_argument("--metrics-port", type=int,
                   default=env_default(SERVICE, "metrics_port", -1, int),
                   help="serve Prometheus metrics on this port (0: any free port; -1: off)")
    p.add_argument("--log-level", default=env_default(SERVICE, "log_level", "INFO", str),
                   help="logging level (DEBUG, INFO, WARNING, ERROR)")
    return p


def config_from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    return Config(args.host, args.port, args.state, args.metrics_port,
                  args.grace_s, args.log_level)
