"""Settings of the frontend (flags, with CLIPPER_FRONTEND_* env defaults; secrets by name)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from services.common.admission import AdmissionLimits
from services.common.config import (
    NON_NEGATIVE,
    POSITIVE,
    DialingTLSFlags,
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
from services.common.credentials import MIN_SECRET_CHARS
from services.common.limits import Limits
from services.common.redis_url import CACHE_SCHEMES, REDIS_SCHEMES, redact_url
from services.common.server import max_message_bytes_flag
from services.common.tls import ClientTLS, ServerTLS
from services.frontend.quotas import QuotaLimits

SERVICE = "frontend"


@dataclass(frozen=True)
class Config:
    host: str = host_flag()
    port: int = port_flag(1337)
    workers: int = flag(
        1, "frontend processes serving --port together (SO_REUSEPORT: the kernel spreads "
        "connections over them), each a full frontend on its own core; more than 1 needs "
        "--state redis://... and --cache none or redis://...; with --metrics-port P, "
        "worker i serves metrics on P+i", check=POSITIVE)
    state: str = flag(
        ".run/frontend-state.json", "state store: an embedded file path, or "
        "redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB shared by several frontends "
        "(applications, models, versions, replicas)")
    selection: str = flag("127.0.0.1:1338", "selection service address")
    heartbeat_ms: int = flag(1000, "how often containers are told to announce themselves "
                             "again", check=POSITIVE)
    replica_ttl_s: float = flag(3.0, "drop a replica after this long without a heartbeat")
    max_message_bytes: int = max_message_bytes_flag()
    coalesce_s: float = flag(
        3.0, "longest a query is held for others to share its message to a container, only "
        "while a replica's queries come at least that often and another is in flight, "
        "ending once any waiting query has a quarter of its time left (fewer messages: "
        "less CPU per query on both ends, bigger batches); 0: never hold",
        name="coalesce-ms", check=NON_NEGATIVE, scale=1 / 1000)
    max_concurrent_rpcs: int = flag(10_000, "RPCs served at once before new ones are refused")
    cache: str = flag("memory", "prediction cache: memory, none, or "
                      "redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB (shared)")
    cache_size: int = flag(100_000, "most entries of the in-memory prediction cache",
                           check=POSITIVE)
    cache_ttl_s: float = flag(600.0, "how long answers (and predictions for feedback) are "
                              "kept", check=POSITIVE)
    limits: Limits = section(Limits, prefix="max-")
    admission: AdmissionLimits = section(AdmissionLimits)
    quotas: QuotaLimits = section(QuotaLimits)
    grace_s: float = grace_flag()
    metrics_port: int = metrics_port_flag()
    log_level: str = log_level_flag()
    log_format: str = log_format_flag()
    access_log_sample: float = flag(
        0.0, "share of queries logged to the access log, logger clipper.access (status, "
        "latency, models, default; never inputs): 0 off, 1 every query")
    tls_flags: ServingTLSFlags = section(ServingTLSFlags, prefix="tls-")
    health_port: int = health_port_flag()
    dial_tls_flags: DialingTLSFlags = section(DialingTLSFlags, prefix="tls-")
    tls_container_name: str = flag(
        "", "name every container's certificate must carry (containers are dialled at the "
        "address they announce, a pod IP in Kubernetes; default: that address's host)")
    # From the environment only.
    management_token: str = ""
    mesh_secret: str = ""
    # From the TLS flags: served when set; used to dial the selection service and
    # containers when enabled.
    tls: ServerTLS | None = None
    client_tls: ClientTLS = field(default_factory=ClientTLS)
    # Set by services/frontend/workers.py for each of several workers: bind the ports
    # with SO_REUSEPORT, beside the other workers.
    reuse_port: bool = False


def config_from_args(argv: list[str] | None = None) -> Config:
    cfg = parse_config(Config, SERVICE, argv, prog="python -m services.frontend")
    management_token = os.environ.get("CLIPPER_MANAGEMENT_TOKEN", "")
    mesh_secret = os.environ.get("CLIPPER_MESH_SECRET", "")
    require(bool(management_token), "CLIPPER_MANAGEMENT_TOKEN must be set")
    require(len(mesh_secret) >= MIN_SECRET_CHARS,
            f"CLIPPER_MESH_SECRET must be set, at least {MIN_SECRET_CHARS} characters (it "
            "replaces CLIPPER_CONTAINER_TOKEN on frontends: containers get their model's "
            "token from python -m services.cli tokens container MODEL)")
    require(cfg.replica_ttl_s * 1000 > cfg.heartbeat_ms,
            f"--replica-ttl-s={cfg.replica_ttl_s}: must exceed one heartbeat")
    require(cfg.cache in ("memory", "none") or cfg.cache.startswith(CACHE_SCHEMES),
            f"--cache={redact_url(cfg.cache)}: expected memory, none or "
            "redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB")
    require(cfg.workers == 1 or cfg.state.startswith(REDIS_SCHEMES),
            f"--workers={cfg.workers} needs a shared state store, --state redis://HOST:PORT/DB "
            f"(--state={cfg.state} is an embedded file, which one process alone may write)")
    require(cfg.workers == 1 or cfg.cache != "memory",
            f"--workers={cfg.workers} needs --cache none or a shared redis://HOST:PORT/DB "
            "(with --cache=memory each worker would keep its own, and feedback reaching "
            "another worker than its query would not find the prediction it follows)")
    require(0.0 <= cfg.access_log_sample <= 1.0,
            f"--access-log-sample={cfg.access_log_sample}: must be within 0..1")
    return replace(cfg, management_token=management_token, mesh_secret=mesh_secret,
                   tls=cfg.tls_flags.server_tls(), client_tls=cfg.dial_tls_flags.client_tls())
