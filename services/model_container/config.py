"""Settings of a model container (flags, with CLIPPER_CONTAINER_* env defaults; with
--model-dir, its manifest fills what neither sets)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.common.config import (
    NON_NEGATIVE,
    POSITIVE,
    ConfigError,
    DialingTLSFlags,
    ServingTLSFlags,
    build_parser,
    config_from_namespace,
    env_name,
    flag,
    grace_flag,
    health_port_flag,
    host_flag,
    log_format_flag,
    log_level_flag,
    metrics_port_flag,
    port_flag,
    require,
    section,
)
from services.common.credentials import token_model
from services.common.errors import InvalidInput
from services.common.server import max_message_bytes_flag
from services.common.tensors import TensorSpec
from services.common.tls import ClientTLS, ServerTLS
from services.model_container import MEMBER_SEPARATOR
from services.model_container.batcher import BatchingConfig
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
    model_dir: str = flag(
        "", f"a model directory: the model file and its manifest {MANIFEST}, which gives "
        "every setting below that no flag or variable sets")
    model_ref: str = flag(
        "", "package.module:attr, or a model file: .joblib/.pkl (scikit-learn), .onnx, .ubj "
        "or XGBoost .json, LightGBM .txt", name="model")
    runtime: str = flag("auto", "what loads and runs --model (auto: by its file, else python)",
                        choices=RUNTIMES)
    output: str = flag(
        "", "what the model answers: predict, predict_proba or decision_function "
        "(scikit-learn, XGBoost, LightGBM; default predict), or an ONNX model's output name "
        "(default its first; several, comma-separated: named outputs)")
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
    warmup_rounds: int = flag(3, "before announcing itself, run the model this many times at "
                              "each warm-up batch size (0: no warm-up)")
    warmup_batch_sizes: str = flag("", "warm-up batch sizes, e.g. 1,8,32 (default: 1, 2, 4... "
                                   "up to --max-batch-size)")
    warmup_inputs: str = flag("", "warm-up inputs: a .npy file of shape [N, *input shape] "
                              "(default: made from the input spec; none and no spec: no "
                              "warm-up)")
    max_message_bytes: int = max_message_bytes_flag()
    grace_s: float = grace_flag()
    metrics_port: int = metrics_port_flag()
    log_level: str = log_level_flag()
    log_format: str = log_format_flag()
    tls_flags: ServingTLSFlags = section(ServingTLSFlags, prefix="tls-")
    health_port: int = health_port_flag()
    dial_tls_flags: DialingTLSFlags = section(DialingTLSFlags, prefix="tls-")
    tls_server_name: str = flag("", "name to verify in the frontends' certificates instead "
                                "of the host of --frontend")
    # From the environment only: this model's token.
    token: str = ""
    # From the flags above: the model with its runtime and output, --frontend split,
    # --input-dtype with --input-shape, the warm-up flags, the TLS flags (served when set;
    # used to dial the frontends when enabled).
    source: ModelSource = field(default_factory=lambda: ModelSource(""))
    frontends: tuple[str, ...] = ()
    input_spec: TensorSpec | None = None
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    tls: ServerTLS | None = None
    client_tls: ClientTLS = field(default_factory=ClientTLS)
    # What the model's answers look like (a model directory's manifest `outputs`).
    output_spec: TensorSpec | None = None
    # Named inputs and outputs (a manifest's `inputs` and `outputs` of several tensors).
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


def parse_shape(raw: str) -> tuple[int, ...]:
    """'64' -> (64,), '8,8' -> (8, 8), '' -> ()."""
    return tuple(int(part) for part in raw.split(",") if part.strip())


# What a manifest gives that no flag does: its tensor specs.
_SPECS = ("output_spec", "named_inputs", "named_outputs")


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The flags; with --model-dir, its manifest's settings fill those that neither a flag
    nor a CLIPPER_CONTAINER_* variable sets. Also the manifest's specs (_SPECS), if any."""
    parser = build_parser(
        Config, SERVICE, prog="python -m services.model_container",
        description="Serve a model: any importable object, or a scikit-learn, ONNX, "
        "XGBoost or LightGBM model file. Several models in one process, each its own "
        f"replica: their flags separated by {MEMBER_SEPARATOR}, the process's own settings "
        f"({', '.join(PROCESS_FLAGS)}) with the first model's, CLIPPER_CONTAINER_TOKEN "
        "holding each model's token, comma-separated.")
    args = parser.parse_args(argv)
    if not args.model_dir:
        return args, {}
    try:
        settings = read_manifest(Path(args.model_dir))
    except ManifestError as exc:
        raise ConfigError(f"--model-dir: {exc}") from None
    specs = {key: settings.pop(key) for key in _SPECS if key in settings}
    parser.set_defaults(**{key: value for key, value in settings.items()
                           if not os.environ.get(env_name(SERVICE, key))})
    args = parser.parse_args(argv)
    for key, value in settings.items():  # an empty flag is an unset one, as for variables
        if getattr(args, key) == "":
            setattr(args, key, value)
    return args, specs


# The process's own settings: flags of the first model only (configs_from_args).
PROCESS_FLAGS = ("--host", "--port", "--advertise-host", "--metrics-port", "--health-port",
                 "--max-message-bytes", "--grace-s", "--log-level", "--log-format",
                 "--tls-cert", "--tls-key", "--tls-client-ca", "--native-threads")


def configs_from_args(argv: list[str]) -> list[Config]:
    """The models a container process serves: one, or several with their flags separated
    by `--and`. The process's own settings (PROCESS_FLAGS: address, serving TLS, metrics
    and health ports, message limit, grace period, logging, native threads) are given
    with the first model's flags only; each model has its own replica id."""
    members: list[list[str]] = [[]]
    for arg in argv:
        if arg == MEMBER_SEPARATOR:
            members.append([])
        else:
            members[-1].append(arg)
    configs = [config_from_args(member) for member in members]
    for member, later in zip(members[1:], configs[1:], strict=True):
        given = [f for f in PROCESS_FLAGS if any(a == f or a.startswith(f + "=") for a in member)]
        require(not given, f"{', '.join(given)} (given with model {later.name!r}) set the "
                "process's own settings: give them with the first model's flags")
    names = [(c.name, c.version) for c in configs]
    duplicated = {f"{n}:{v}" for n, v in names if names.count((n, v)) > 1}
    require(not duplicated, f"one process serves each model version once: "
            f"{', '.join(sorted(duplicated))} given twice")
    ids = [c.replica_id for c in configs if c.replica_id]
    require(len(configs) == 1 or len(set(ids)) == len(ids),
            "each model of a process is its own replica: give each its own --replica-id "
            "(CLIPPER_CONTAINER_REPLICA_ID would name them all)")
    return configs


def _token_of(name: str, tokens: str) -> str:
    """The token of model `name` among CLIPPER_CONTAINER_TOKEN's (one per model the
    process serves, comma-separated)."""
    require(bool(tokens), "CLIPPER_CONTAINER_TOKEN must be set: this model's token, printed "
            f"by python -m services.cli tokens container {name or 'MODEL'}")
    named: dict[str, str] = {}
    for token in (t.strip() for t in tokens.split(",") if t.strip()):
        try:
            model = token_model(token)
        except ValueError as exc:
            raise ConfigError(
                f"CLIPPER_CONTAINER_TOKEN: {exc}; the shared token of older versions is no "
                f"longer accepted: python -m services.cli tokens container {name} prints "
                "this model's") from None
        require(model not in named, f"CLIPPER_CONTAINER_TOKEN holds two tokens of model "
                f"{model!r}")
        named[model] = token
    require(bool(named), "CLIPPER_CONTAINER_TOKEN holds no token (comma-separated, one per "
            "model)")
    if name not in named:
        held = ", ".join(repr(n) for n in named)
        raise ConfigError(f"CLIPPER_CONTAINER_TOKEN is the token of model {held}, "
                          f"not of --name {name!r}" if len(named) == 1 else
                          f"CLIPPER_CONTAINER_TOKEN holds the tokens of models {held}, "
                          f"none of --name {name!r}")
    return named[name]


def config_from_args(argv: list[str] | None = None) -> Config:
    args, specs = _parse(argv)
    cfg = config_from_namespace(Config, SERVICE, args)
    require(bool(cfg.model_ref), "--model (CLIPPER_CONTAINER_MODEL) or --model-dir is required")
    runtime = runtime_for(cfg.model_ref) if cfg.runtime == "auto" else cfg.runtime
    try:
        require_runtime(runtime)
    except MissingRuntime as exc:
        raise ConfigError(f"--model {cfg.model_ref}: {exc}") from None
    require(not cfg.output or runtime == "onnx" or cfg.output in OUTPUTS,
            f"--output={cfg.output!r}: expected one of {', '.join(OUTPUTS)} (or, for an ONNX "
            "model, the name of one of its outputs)")
    require(bool(cfg.name), "--name (CLIPPER_CONTAINER_NAME) is required")
    token = _token_of(cfg.name, os.environ.get("CLIPPER_CONTAINER_TOKEN", ""))
    spec = None
    try:
        if cfg.input_dtype:
            spec = TensorSpec(cfg.input_dtype, parse_shape(cfg.input_shape))
        warmup = WarmupConfig(cfg.warmup_rounds, parse_shape(cfg.warmup_batch_sizes),
                              cfg.warmup_inputs)
    except (ValueError, InvalidInput) as exc:
        raise ConfigError(str(exc)) from None
    return replace(
        cfg,
        token=token,
        source=ModelSource(cfg.model_ref, runtime, cfg.output),
        frontends=tuple(a.strip() for a in cfg.frontend.split(",") if a.strip()),
        advertise_host=cfg.advertise_host or ("127.0.0.1" if cfg.host == "0.0.0.0"
                                              else cfg.host),
        input_spec=spec,
        warmup=warmup,
        tls=cfg.tls_flags.server_tls(),
        client_tls=cfg.dial_tls_flags.client_tls(cfg.tls_server_name),
        output_spec=specs.get("output_spec"),
        inputs=specs.get("named_inputs", ()),
        outputs=specs.get("named_outputs", ()),
    )
