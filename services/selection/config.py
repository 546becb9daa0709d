"""Settings of the selection service (flags, with CLIPPER_SELECTION_* env defaults)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from services.common.config import (
    add_lifecycle_flags,
    add_listen_flags,
    add_tls_flags,
    env_default,
    server_tls_from,
)
from services.common.tls import ServerTLS

SERVICE = "selection"


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    state: str
    metrics_port: int
    grace_s: float
    log_level: str
    tls: ServerTLS | None = None
    health_port: int = -1


def build_parser() -> argparse.ArgumentParser:
    """The flags, with defaults read from the environment now."""
    p = argparse.ArgumentParser(prog="python -m services.selection")
    add_listen_flags(p, SERVICE, 1338)
    p.add_argument(
        "--state",
        default=env_default(SERVICE, "state", ".run/selection-state.json", str),
        help="policy state per application and context: an embedded file path, "
        "or redis://HOST:PORT/DB shared by several selection replicas",
    )
    add_lifecycle_flags(p, SERVICE)
    add_tls_flags(p, SERVICE, client=False)
    return p


def config_from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    return Config(args.host, args.port, args.state, args.metrics_port,
                  args.grace_s, args.log_level, server_tls_from(args), args.health_port)
