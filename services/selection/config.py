"""Settings of the selection service (flags, with CLIPPER_SELECTION_* env defaults; its
token from CLIPPER_SELECTION_TOKEN)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from services.common.admission import AdmissionLimits
from services.common.config import (
    NON_NEGATIVE,
    POSITIVE,
    ServingTLSFlags,
    flag,
    grace_flag,
    health_port_flag,
    host_flag,
    log_format_flag,
    log_level_flag,
    metrics_port_flag,
    parse_config,
    port_flag,
    require,
    section,
)
from services.common.tls import ServerTLS
from services.selection.arms import DEFAULT_VERSIONS_KEPT

SERVICE = "selection"


@dataclass(frozen=True)
class Config:
    host: str = host_flag()
    port: int = port_flag(1338)
    state: str = flag(
        ".run/selection-state.json", "policy state per application and context: an embedded "
        "file path, or redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB shared by several selection "
        "replicas")
    context_ttl_s: float = flag(
        30 * 86400.0, "a context key's policy state is dropped this long after its last "
        "feedback (then it starts again from the application-wide state); 0: kept until "
        "evicted; an application's policy parameter context_ttl_s overrides it",
        check=NON_NEGATIVE)
    max_contexts: int = flag(
        10_000, "embedded state: most context keys with a policy state, the least recently "
        "updated evicted first (on Redis, its maxmemory with policy volatile-lru bounds them)",
        check=POSITIVE)
    versions_kept: int = flag(
        DEFAULT_VERSIONS_KEPT, "versions of one model a learning policy keeps a record of "
        "(the versions served now, then the most recently served: a rollback finds its "
        "record)", check=POSITIVE)
    admission: AdmissionLimits = section(AdmissionLimits)
    grace_s: float = grace_flag()
    metrics_port: int = metrics_port_flag()
    log_level: str = log_level_flag()
    log_format: str = log_format_flag()
    tls_flags: ServingTLSFlags = section(ServingTLSFlags, prefix="tls-")
    health_port: int = health_port_flag()
    # From the environment only: the token frontends call with.
    token: str = ""
    # From the TLS flags: served when set.
    tls: ServerTLS | None = None


def config_from_args(argv: list[str] | None = None) -> Config:
    cfg = parse_config(Config, SERVICE, argv, prog="python -m services.selection")
    token = os.environ.get("CLIPPER_SELECTION_TOKEN", "")
    require(bool(token), "CLIPPER_SELECTION_TOKEN must be set: the token frontends call with, "
            "printed by python -m services.cli tokens selection")
    return replace(cfg, token=token, tls=cfg.tls_flags.server_tls())
