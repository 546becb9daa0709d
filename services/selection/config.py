"""Settings of the selection service (flags, with CLIPPER_SELECTION_* env defaults; its
token from CLIPPER_SELECTION_TOKEN)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from services.common.admission import AdmissionLimits, add_admission_flags, admission_from_args
from services.common.config import (
    add_lifecycle_flags,
    add_listen_flags,
    add_tls_flags,
    env_default,
    require,
    server_tls_from,
)
from services.common.tls import ServerTLS
from services.selection.arms import DEFAULT_VERSIONS_KEPT

SERVICE = "selection"


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    state: str
    context_ttl_s: float
    max_contexts: int
    token: str
    metrics_port: int
    grace_s: float
    log_level: str
    tls: ServerTLS | None = None
    health_port: int = -1
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    versions_kept: int = DEFAULT_VERSIONS_KEPT
    log_format: str = "text"


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
    p.add_argument(
        "--context-ttl-s", type=float,
        default=env_default(SERVICE, "context_ttl_s", 30 * 86400.0, float),
        help="a context key's policy state is dropped this long after its last feedback "
        "(then it starts again from the application-wide state); 0: kept until evicted; "
        "an application's policy parameter context_ttl_s overrides it",
    )
    p.add_argument(
        "--max-contexts", type=int,
        default=env_default(SERVICE, "max_contexts", 10_000, int),
        help="embedded state: most context keys with a policy state, the least recently "
        "updated evicted first (on Redis, its maxmemory with policy volatile-lru bounds them)",
    )
    p.add_argument(
        "--versions-kept", type=int,
        default=env_default(SERVICE, "versions_kept", DEFAULT_VERSIONS_KEPT, int),
        help="versions of one model a learning policy keeps a record of (the versions "
        "served now, then the most recently served: a rollback finds its record)",
    )
    add_admission_flags(p, SERVICE)
    add_lifecycle_flags(p, SERVICE)
    add_tls_flags(p, SERVICE, client=False)
    return p


def config_from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    require(args.context_ttl_s >= 0, f"--context-ttl-s={args.context_ttl_s}: must be >= 0")
    require(args.max_contexts > 0, f"--max-contexts={args.max_contexts}: must be > 0")
    require(args.versions_kept > 0, f"--versions-kept={args.versions_kept}: must be > 0")
    token = os.environ.get("CLIPPER_SELECTION_TOKEN", "")
    require(bool(token), "CLIPPER_SELECTION_TOKEN must be set: the token frontends call with, "
            "printed by python -m services.cli tokens selection")
    return Config(args.host, args.port, args.state, args.context_ttl_s, args.max_contexts,
                  token, args.metrics_port, args.grace_s, args.log_level,
                  server_tls_from(args), args.health_port, admission_from_args(args),
                  args.versions_kept, args.log_format)
