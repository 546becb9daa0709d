"""Settings of a model container (flags, with CLIPPER_CONTAINER_* env defaults)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from services.common.config import (
    ConfigError,
    add_lifecycle_flags,
    add_listen_flags,
    add_tls_flags,
    client_tls_from,
    env_default,
    env_name,
    require,
    server_tls_from,
)
from services.common.credentials import token_model
from services.common.errors import InvalidInput
from services.common.server import MIN_MESSAGE_BYTES, add_message_size_flag
from services.common.tensors import TensorSpec
from services.common.tls import ClientTLS, ServerTLS
from services.model_container.batcher import BATCHING_MODES, BatchingConfig
from services.model_container.manifest import MANIFEST, ManifestError, read_manifest
from services.model_container.runner import WORKER_KINDS
from services.model_container.runtimes import (
    OUTPUTS,
    RUNTIMES,
    MissingRuntime,
    runtime_for,
)
from services.model_container.runtimes import require as require_runtime
from services.model_container.sdk import ModelSource
from services.model_container.warmup import WarmupConfig

SERVICE = "container"


@dataclass(frozen=True)
class Config:
    source: ModelSource
    name: str
    version: str
    frontends: tuple[str, ...]
    token: str
    replica_id: str
    host: str
    port: int
    advertise_host: str
    input_spec: TensorSpec | None
    batching: BatchingConfig
    worker: str
    native_threads: int
    heartbeat_s: float
    max_message_bytes: int
    metrics_port: int
    grace_s: float
    log_level: str
    # TLS: served when set; used to dial the frontends when enabled.
    tls: ServerTLS | None = None
    client_tls: ClientTLS = field(default_factory=ClientTLS)
    health_port: int = -1
    log_format: str = "text"
    # What the model's answers look like (a model directory's manifest `outputs`).
    output_spec: TensorSpec | None = None
    warmup: WarmupConfig = field(default_factory=WarmupConfig)


def parse_shape(raw: str) -> tuple[int, ...]:
    """'64' -> (64,), '8,8' -> (8, 8), '' -> ()."""
    return tuple(int(part) for part in raw.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    def env(name: str, default: str) -> str:
        return env_default(SERVICE, name, default, str)

    p = argparse.ArgumentParser(
        prog="python -m services.model_container",
        description="Serve a model: any importable object, or a scikit-learn, ONNX, "
        "XGBoost or LightGBM model file.",
    )
    p.add_argument("--model-dir", default=env("model_dir", ""),
                   help=f"a model directory: the model file and its manifest {MANIFEST}, "
                   "which gives every setting below that no flag or variable sets")
    p.add_argument("--model", default=env("model", ""),
                   help="package.module:attr, or a model file: .joblib/.pkl (scikit-learn), "
                   ".onnx, .ubj or XGBoost .json, LightGBM .txt")
    p.add_argument("--runtime", choices=RUNTIMES, default=env("runtime", "auto"),
                   help="what loads and runs --model (auto: by its file, else python)")
    p.add_argument("--output", default=env("output", ""),
                   help="what the model answers: predict, predict_proba or decision_function "
                   "(scikit-learn, XGBoost, LightGBM; default predict), or an ONNX model's "
                   "output name (default its first)")
    p.add_argument("--name", default=env("name", ""), help="model name applications link to")
    p.add_argument("--version", default=env("version", "1"),
                   help="model version this container serves")
    p.add_argument(
        "--frontend", default=env("frontend", "127.0.0.1:1337"),
        help="frontend address(es) to announce to, comma-separated",
    )
    add_listen_flags(p, SERVICE, 0)
    p.add_argument(
        "--advertise-host", default=env("advertise_host", ""),
        help="host frontends dial (default: --host, or 127.0.0.1 when that is 0.0.0.0)",
    )
    p.add_argument("--replica-id", default=env("replica_id", ""),
                   help="this replica's id (default: a random one); the replica secret, "
                   "not the id, keeps others from taking it over")
    p.add_argument("--input-dtype", default=env("input_dtype", ""), help="e.g. float32")
    p.add_argument("--input-shape", default=env("input_shape", ""), help="e.g. 64 or 8,8")
    p.add_argument("--batching", choices=BATCHING_MODES, default=env("batching", "adaptive"),
                   help="adaptive (deadline-aware) or fixed (size + timeout, a baseline)")
    p.add_argument("--max-batch-size", type=int,
                   default=env_default(SERVICE, "max_batch_size", 64, int),
                   help="largest batch")
    p.add_argument("--max-queue", type=int, default=env_default(SERVICE, "max_queue", 1024, int),
                   help="queries waiting past this are rejected at once")
    p.add_argument("--max-delay-ms", type=float,
                   default=env_default(SERVICE, "max_delay_ms", 10.0, float),
                   help="longest wait for a bigger batch after the oldest query came")
    p.add_argument("--concurrency", type=int,
                   default=env_default(SERVICE, "concurrency", 1, int),
                   help="batches running at once, in as many worker threads or processes; a "
                   "second starts beside a running one only when a full batch takes over a "
                   "quarter of the queries' budget or a full batch waits")
    p.add_argument("--batch-timeout-s", type=float,
                   default=env_default(SERVICE, "batch_timeout_s", 0.0, float),
                   help="a batch running longer fails (the frontend retries elsewhere); a "
                   "worker thread it leaves stuck stops the container (0: 10 times the batch's "
                   "latency by the latency model, at least 1 s; 30 s until it is known)")
    p.add_argument("--native-threads", type=int,
                   default=env_default(SERVICE, "native_threads", 1, int),
                   help="threads each worker's BLAS/OpenMP pools may use (0: the libraries' "
                   "own default)")
    p.add_argument("--worker", choices=WORKER_KINDS, default=env("worker", "auto"),
                   help="where batches run: auto (threads, moved to warm worker processes "
                   "once batches measurably stall the event loop), thread, or process (with "
                   "one worker thread, batches expected under 2 ms run on the event loop)")
    p.add_argument(
        "--heartbeat-s", type=float, default=env_default(SERVICE, "heartbeat_s", 1.0, float),
        help="announce interval until a frontend answers with its own (--heartbeat-ms), "
        "and between retries",
    )
    p.add_argument("--warmup-rounds", type=int,
                   default=env_default(SERVICE, "warmup_rounds", 3, int),
                   help="before announcing itself, run the model this many times at each "
                   "warm-up batch size (0: no warm-up)")
    p.add_argument("--warmup-batch-sizes", default=env("warmup_batch_sizes", ""),
                   help="warm-up batch sizes, e.g. 1,8,32 (default: 1, 2, 4... up to "
                   "--max-batch-size)")
    p.add_argument("--warmup-inputs", default=env("warmup_inputs", ""),
                   help="warm-up inputs: a .npy file of shape [N, *input shape] (default: "
                   "made from the input spec; none and no spec: no warm-up)")
    add_message_size_flag(p, SERVICE)
    add_lifecycle_flags(p, SERVICE)
    add_tls_flags(p, SERVICE)
    p.add_argument("--tls-server-name", default=env("tls_server_name", ""),
                   help="name to verify in the frontends' certificates instead of the host "
                   "of --frontend")
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The flags; with --model-dir, its manifest's settings fill those that neither a flag
    nor a CLIPPER_CONTAINER_* variable sets."""
    parser = build_parser()
    parser.set_defaults(output_spec=None)
    args = parser.parse_args(argv)
    if not args.model_dir:
        return args
    try:
        settings = read_manifest(Path(args.model_dir))
    except ManifestError as exc:
        raise ConfigError(f"--model-dir: {exc}") from None
    parser.set_defaults(**{key: value for key, value in settings.items()
                           if not os.environ.get(env_name(SERVICE, key))})
    args = parser.parse_args(argv)
    for key, value in settings.items():  # an empty flag is an unset one, as for variables
        if getattr(args, key) == "":
            setattr(args, key, value)
    return args


def config_from_args(argv: list[str] | None = None) -> Config:
    args = _parse(argv)
    token = os.environ.get("CLIPPER_CONTAINER_TOKEN", "")
    require(bool(args.model), "--model (CLIPPER_CONTAINER_MODEL) or --model-dir is required")
    runtime = runtime_for(args.model) if args.runtime == "auto" else args.runtime
    try:
        require_runtime(runtime)
    except MissingRuntime as exc:
        raise ConfigError(f"--model {args.model}: {exc}") from None
    require(not args.output or runtime == "onnx" or args.output in OUTPUTS,
            f"--output={args.output!r}: expected one of {', '.join(OUTPUTS)} (or, for an ONNX "
            "model, the name of one of its outputs)")
    require(bool(args.name), "--name (CLIPPER_CONTAINER_NAME) is required")
    require(bool(token), "CLIPPER_CONTAINER_TOKEN must be set: this model's token, printed by "
            f"python -m services.cli tokens container {args.name or 'MODEL'}")
    try:
        token_model_name = token_model(token)
    except ValueError as exc:
        raise ConfigError(
            f"CLIPPER_CONTAINER_TOKEN: {exc}; the shared token of older versions is no "
            f"longer accepted: python -m services.cli tokens container {args.name} prints "
            "this model's") from None
    require(token_model_name == args.name,
            f"CLIPPER_CONTAINER_TOKEN is the token of model {token_model_name!r}, "
            f"not of --name {args.name!r}")
    try:
        batching = BatchingConfig(args.batching, args.max_batch_size, args.max_queue,
                                  args.max_delay_ms, args.concurrency, args.batch_timeout_s)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    require(args.native_threads >= 0, f"--native-threads={args.native_threads}: must be >= 0")
    require(args.heartbeat_s > 0, f"--heartbeat-s={args.heartbeat_s}: must be > 0")
    require(args.max_message_bytes >= MIN_MESSAGE_BYTES,
            f"--max-message-bytes={args.max_message_bytes}: must be >= {MIN_MESSAGE_BYTES}")
    spec = None
    try:
        if args.input_dtype:
            spec = TensorSpec(args.input_dtype, parse_shape(args.input_shape))
        warmup = WarmupConfig(args.warmup_rounds, parse_shape(args.warmup_batch_sizes),
                              args.warmup_inputs)
    except (ValueError, InvalidInput) as exc:
        raise ConfigError(str(exc)) from None
    advertise = args.advertise_host or ("127.0.0.1" if args.host == "0.0.0.0" else args.host)
    return Config(
        source=ModelSource(args.model, runtime, args.output),
        name=args.name,
        version=args.version,
        frontends=tuple(a.strip() for a in args.frontend.split(",") if a.strip()),
        token=token,
        replica_id=args.replica_id,
        host=args.host,
        port=args.port,
        advertise_host=advertise,
        input_spec=spec,
        batching=batching,
        worker=args.worker,
        native_threads=args.native_threads,
        heartbeat_s=args.heartbeat_s,
        max_message_bytes=args.max_message_bytes,
        metrics_port=args.metrics_port,
        grace_s=args.grace_s,
        log_level=args.log_level,
        log_format=args.log_format,
        tls=server_tls_from(args),
        client_tls=client_tls_from(args, args.tls_server_name),
        health_port=args.health_port,
        output_spec=args.output_spec,
        warmup=warmup,
    )
