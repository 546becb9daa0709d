"""Settings of a model container (flags, with CLIPPER_CONTAINER_* env defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from services.common.config import (
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    DialingTLSFlags,
    ServingTLSFlags,
    flag,
    grace_flag,
    health_port_flag,
    host_flag,
    log_level_flag,
    metrics_port_flag,
    parse_config,
    port_flag,
    require,
    section,
)
from services.common.credentials import token_model
from services.common.server import max_message_bytes_flag
from services.common.tensors import TensorSpec
from services.common.tls import ClientTLS, ServerTLS
from services.model_container.batcher import BatchingConfig
from services.model_container.runner import WORKER_KINDS

SERVICE = "container"


@dataclass(frozen=True)
class Config:
    model_ref: str = flag("", "package.module:attr or file.joblib", name="model")
    name: str = flag("", "model name applications link to")
    version: str = flag("1", "model version this container serves")
    frontend: str = flag("127.0.0.1:1337",
                         "frontend address(es) to announce to, comma-separated")
    host: str = host_flag()
    port: int = port_flag(0)
    advertise_host: str = flag(
        "", "host frontends dial (default: --host, or 127.0.0.1 when that is 0.0.0.0)")
    replica_id: str = flag("", "this replica's id (default: a random one); the replica "
                           "secret, not the id, keeps others from taking it over")
    input_dtype: str = flag("", "e.g. float32")
    input_shape: str = flag("", "e.g. 64 or 8,8")
    batching: BatchingConfig = section(BatchingConfig)
    native_threads: int = flag(1, "threads each worker's BLAS/OpenMP pools may use (0: the "
                               "libraries' own default)", check=NON_NEGATIVE)
    worker: str = flag(
        "auto", "where batches run: auto (threads, moved to warm worker processes once "
        "batches measurably stall the event loop), thread, or process (with one worker "
        "thread, batches expected under 2 ms run on the event loop)", choices=WORKER_KINDS)
    heartbeat_s: float = flag(1.0, "announce interval until a frontend answers with its own "
                              "(--heartbeat-ms), and between retries", check=POSITIVE)
    max_message_bytes: int = max_message_bytes_flag()
    grace_s: float = grace_flag()
    metrics_port: int = metrics_port_flag()
    log_level: str = log_level_flag()
    tls_flags: ServingTLSFlags = section(ServingTLSFlags, prefix="tls-")
    health_port: int = health_port_flag()
    dial_tls_flags: DialingTLSFlags = section(DialingTLSFlags, prefix="tls-")
    tls_server_name: str = flag("", "name to verify in the frontends' certificates instead "
                                "of the host of --frontend")
    # From the environment only: this model's token.
    token: str = ""
    # From the flags above: --frontend split, --input-dtype with --input-shape, the TLS
    # flags (served when set; used to dial the frontends when enabled).
    frontends: tuple[str, ...] = ()
    input_spec: TensorSpec | None = None
    tls: ServerTLS | None = None
    client_tls: ClientTLS = field(default_factory=ClientTLS)


def parse_shape(raw: str) -> tuple[int, ...]:
    """'64' -> (64,), '8,8' -> (8, 8), '' -> ()."""
    return tuple(int(part) for part in raw.split(",") if part.strip())


def config_from_args(argv: list[str] | None = None) -> Config:
    cfg = parse_config(Config, SERVICE, argv, prog="python -m services.model_container",
                       description="Serve a model: any importable object or a joblib file.")
    token = os.environ.get("CLIPPER_CONTAINER_TOKEN", "")
    require(bool(cfg.model_ref), "--model (CLIPPER_CONTAINER_MODEL) is required")
    require(bool(cfg.name), "--name (CLIPPER_CONTAINER_NAME) is required")
    require(bool(token), "CLIPPER_CONTAINER_TOKEN must be set: this model's token, printed by "
            f"python -m services.cli tokens container {cfg.name or 'MODEL'}")
    try:
        token_model_name = token_model(token)
    except ValueError as exc:
        raise ConfigError(
            f"CLIPPER_CONTAINER_TOKEN: {exc}; the shared token of older versions is no "
            f"longer accepted: python -m services.cli tokens container {cfg.name} prints "
            "this model's") from None
    require(token_model_name == cfg.name,
            f"CLIPPER_CONTAINER_TOKEN is the token of model {token_model_name!r}, "
            f"not of --name {cfg.name!r}")
    spec = None
    if cfg.input_dtype:
        spec = TensorSpec(cfg.input_dtype, parse_shape(cfg.input_shape))
    return replace(
        cfg,
        token=token,
        frontends=tuple(a.strip() for a in cfg.frontend.split(",") if a.strip()),
        advertise_host=cfg.advertise_host or ("127.0.0.1" if cfg.host == "0.0.0.0"
                                              else cfg.host),
        input_spec=spec,
        tls=cfg.tls_flags.server_tls(),
        client_tls=cfg.dial_tls_flags.client_tls(cfg.tls_server_name),
    )
