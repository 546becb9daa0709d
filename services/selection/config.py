"""Settings of the selection service (flags, with CLIPPER_SELECTION_* env defaults; its
token from CLIPPER_SELECTION_TOKEN)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from services.common.config import add_lifecycle_flags, add_listen_flags, env_default, require

SERVICE = "selection"


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    state: str
    token: str
    metrics_port: int
    grace_s: float
    log_level: str


def build_parser() -> argparse.ArgumentParser:
    """The flags, with defaults read from the environment now."""
    p = argparse.ArgumentParser(prog="python -m services.selection")
    add_listen_flags(p, SERVICE, 1338)
    p.add_argument(
        "--state",
        default=env_default(SERVICE, "state", ".run/selection-state.json", str),
        help="policy state per application and context: an embedded file path, or "
        "redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB shared by several selection replicas",
    )
    add_lifecycle_flags(p, SERVICE)
    return p


def config_from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    token = os.environ.get("CLIPPER_SELECTION_TOKEN", "")
    require(bool(token), "CLIPPER_SELECTION_TOKEN must be set: the token frontends call with, "
            "printed by python -m services.cli tokens selection")
    return Config(args.host, args.port, args.state, token, args.metrics_port,
                  args.grace_s, args.log_level)
