"""Settings of a model container (flags, with CLIPPER_CONTAINER_* env defaults)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from services.common.config import env_default, require
from services.common.tensors import TensorSpec

SERVICE = "container"


@dataclass(frozen=True)
class Config:
    model_ref: str
    name: str
    version: str
    frontends: tuple[str, ...]
    token: str
    host: str
    port: int
    advertise_host: str
    input_spec: TensorSpec | None
    max_batch_size: int
    max_queue: int
    heartbeat_s: float
    log_level: str


def parse_shape(raw: str) -> tuple[int, ...]:
    """'64' -> (64,), '8,8' -> (8, 8), '' -> ()."""
    return tuple(int(part) for part in raw.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    def env(name: str, default: str) -> str:
        return env_default(SERVICE, name, default, str)

    p = argparse.ArgumentParser(
        prog="python -m services.model_container",
        description="Serve a model: any importable object or a joblib file.",
    )
    p.add_argument("--model", default=env("model", ""), help="package.module:attr or file.joblib")
    p.add_argument("--name", default=env("name", ""), help="model name applications link to")
    p.add_argument("--version", default=env("version", "1"))
    p.add_argument(
        "--frontend", default=env("frontend", "127.0.0.1:1337"),
        help="frontend address(es) to announce to, comma-separated",
    )
    p.add_argument("--host", default=env("host", "127.0.0.1"))
    p.add_argument("--port", type=int, default=env_default(SERVICE, "port", 0, int))
    p.add_argument(
        "--advertise-host", default=env("advertise_host", ""),
        help="host frontends dial (default: --host, or 127.0.0.1 when that is 0.0.0.0)",
    )
    p.add_argument("--input-dtype", default=env("input_dtype", ""), help="e.g. float32")
    p.add_argument("--input-shape", default=env("input_shape", ""), help="e.g. 64 or 8,8")
    p.add_argument(
        "--max-batch-size", type=int, default=env_default(SERVICE, "max_batch_size", 32, int)
    )
    p.add_argument("--max-queue", type=int, default=env_default(SERVICE, "max_queue", 1024, int))
    p.add_argument(
        "--heartbeat-s", type=float, default=env_default(SERVICE, "heartbeat_s", 1.0, float)
    )
    p.add_argument("--log-level", default=env("log_level", "INFO"))
    return p


def config_from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    token = os.environ.get("CLIPPER_CONTAINER_TOKEN", "")
    require(bool(args.model), "--model (CLIPPER_CONTAINER_MODEL) is required")
    require(bool(args.name), "--name (CLIPPER_CONTAINER_NAME) is required")
    require(bool(token), "CLIPPER_CONTAINER_TOKEN must be set (the frontend's container token)")
    require(args.max_batch_size >= 1, f"--max-batch-size={args.max_batch_size}: must be >= 1")
    require(args.max_queue >= 1, f"--max-queue={args.max_queue}: must be >= 1")
    require(args.heartbeat_s > 0, f"--heartbeat-s={args.heartbeat_s}: must be > 0")
    spec = None
    if args.input_dtype:
        spec = TensorSpec(args.input_dtype, parse_shape(args.input_shape))
    advertise = args.advertise_host or ("127.0.0.1" if args.host == "0.0.0.0" else args.host)
    return Config(
        model_ref=args.model,
        name=args.name,
        version=args.version,
        frontends=tuple(a.strip() for a in args.frontend.split(",") if a.strip()),
        token=token,
        host=args.host,
        port=args.port,
        advertise_host=advertise,
        input_spec=spec,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        heartbeat_s=args.heartbeat_s,
        log_level=args.log_level,
    )
