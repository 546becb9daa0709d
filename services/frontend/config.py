"""Settings of the frontend (flags, with CLIPPER_FRONTEND_* env defaults; secrets by name)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from services.common.admission import AdmissionLimits, add_admission_flags, admission_from_args
from services.common.config import (
    add_lifecycle_flags,
    add_listen_flags,
    add_tls_flags,
    client_tls_from,
    env_default,
    require,
    server_tls_from,
)
from services.common.credentials import MIN_SECRET_CHARS
from services.common.limits import Limits, add_limit_flags, limits_from_args
from services.common.redis_url import CACHE_SCHEMES, redact_url
from services.common.server import MIN_MESSAGE_BYTES, add_message_size_flag
from services.common.tls import ClientTLS, ServerTLS
from services.frontend.quotas import QuotaLimits, add_quota_flags, quotas_from_args

SERVICE = "frontend"


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    state: str
    selection: str
    management_token: str
    mesh_secret: str
    heartbeat_ms: int
    replica_ttl_s: float
    max_message_bytes: int
    max_concurrent_rpcs: int
    cache: str
    cache_size: int
    cache_ttl_s: float
    metrics_port: int
    grace_s: float
    log_level: str
    limits: Limits
    admission: AdmissionLimits
    quotas: QuotaLimits
    # TLS: served when set; used to dial the selection service and containers when enabled.
    tls: ServerTLS | None = None
    client_tls: ClientTLS = field(default_factory=ClientTLS)
    health_port: int = -1
    tls_container_name: str = ""
    log_format: str = "text"
    # Share of queries in the access log (0: off).
    access_log_sample: float = 0.0


def build_parser() -> argparse.ArgumentParser:
    """The flags, with defaults read from the environment now."""
    def env(name: str, default: str) -> str:
        return env_default(SERVICE, name, default, str)

    p = argparse.ArgumentParser(prog="python -m services.frontend")
    add_listen_flags(p, SERVICE, 1337)
    p.add_argument(
        "--state", default=env("state", ".run/frontend-state.json"),
        help="state store: an embedded file path, or redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB "
        "shared by several frontends (applications, models, versions, replicas)",
    )
    p.add_argument("--selection", default=env("selection", "127.0.0.1:1338"),
                   help="selection service address")
    p.add_argument("--heartbeat-ms", type=int,
                   default=env_default(SERVICE, "heartbeat_ms", 1000, int),
                   help="how often containers are told to announce themselves again")
    p.add_argument("--replica-ttl-s", type=float,
                   default=env_default(SERVICE, "replica_ttl_s", 3.0, float),
                   help="drop a replica after this long without a heartbeat")
    add_message_size_flag(p, SERVICE)
    p.add_argument("--max-concurrent-rpcs", type=int,
                   default=env_default(SERVICE, "max_concurrent_rpcs", 10_000, int),
                   help="RPCs served at once before new ones are refused")
    p.add_argument("--cache", default=env("cache", "memory"),
                   help="prediction cache: memory, none, or "
                   "redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB (shared)")
    p.add_argument("--cache-size", type=int,
                   default=env_default(SERVICE, "cache_size", 100_000, int),
                   help="most entries of the in-memory prediction cache")
    p.add_argument("--cache-ttl-s", type=float,
                   default=env_default(SERVICE, "cache_ttl_s", 600.0, float),
                   help="how long answers (and predictions for feedback) are kept")
    add_limit_flags(p, SERVICE)
    add_admission_flags(p, SERVICE)
    add_quota_flags(p, SERVICE)
    add_lifecycle_flags(p, SERVICE)
    p.add_argument("--access-log-sample", type=float,
                   default=env_default(SERVICE, "access_log_sample", 0.0, float),
                   help="share of queries logged to the access log, logger clipper.access "
                   "(status, latency, models, default; never inputs): 0 off, 1 every query")
    add_tls_flags(p, SERVICE)
    p.add_argument(
        "--tls-container-name", default=env("tls_container_name", ""),
        help="name every container's certificate must carry (containers are dialled at the "
        "address they announce, a pod IP in Kubernetes; default: that address's host)",
    )
    return p


def config_from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    management_token = os.environ.get("CLIPPER_MANAGEMENT_TOKEN", "")
    mesh_secret = os.environ.get("CLIPPER_MESH_SECRET", "")
    require(bool(management_token), "CLIPPER_MANAGEMENT_TOKEN must be set")
    require(len(mesh_secret) >= MIN_SECRET_CHARS,
            f"CLIPPER_MESH_SECRET must be set, at least {MIN_SECRET_CHARS} characters (it "
            "replaces CLIPPER_CONTAINER_TOKEN on frontends: containers get their model's "
            "token from python -m services.cli tokens container MODEL)")
    require(args.heartbeat_ms > 0, f"--heartbeat-ms={args.heartbeat_ms}: must be > 0")
    require(args.replica_ttl_s * 1000 > args.heartbeat_ms,
            f"--replica-ttl-s={args.replica_ttl_s}: must exceed one heartbeat")
    require(args.cache in ("memory", "none") or args.cache.startswith(CACHE_SCHEMES),
            f"--cache={redact_url(args.cache)}: expected memory, none or "
            "redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB")
    require(0.0 <= args.access_log_sample <= 1.0,
            f"--access-log-sample={args.access_log_sample}: must be within 0..1")
    require(args.cache_size > 0, f"--cache-size={args.cache_size}: must be > 0")
    require(args.cache_ttl_s > 0, f"--cache-ttl-s={args.cache_ttl_s}: must be > 0")
    require(args.max_message_bytes >= MIN_MESSAGE_BYTES,
            f"--max-message-bytes={args.max_message_bytes}: must be >= {MIN_MESSAGE_BYTES}")
    return Config(
        host=args.host,
        port=args.port,
        state=args.state,
        selection=args.selection,
        management_token=management_token,
        mesh_secret=mesh_secret,
        heartbeat_ms=args.heartbeat_ms,
        replica_ttl_s=args.replica_ttl_s,
        max_message_bytes=args.max_message_bytes,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        cache=args.cache,
        cache_size=args.cache_size,
        cache_ttl_s=args.cache_ttl_s,
        metrics_port=args.metrics_port,
        grace_s=args.grace_s,
        log_level=args.log_level,
        log_format=args.log_format,
        access_log_sample=args.access_log_sample,
        limits=limits_from_args(args),
        admission=admission_from_args(args),
        quotas=quotas_from_args(args),
        tls=server_tls_from(args),
        client_tls=client_tls_from(args),
        health_port=args.health_port,
        tls_container_name=args.tls_container_name,
    )
