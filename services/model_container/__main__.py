"""`python -m services.model_container --model pkg.mod:attr --name NAME --frontend HOST:PORT`.

Several models in one process, each its own replica on the one port and stream:
`... --name a ... --and --model other:Model --name b --frontend HOST:PORT ...`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import sys
import uuid
from dataclasses import dataclass

from services.common import named_tensors
from services.common.auth import FRONTEND, AuthInterceptor, rules_for, token_auth
from services.common.config import ConfigError
from services.common.credentials import replica_credential
from services.common.metrics import MODEL_ATTRIBUTE, VERSION_ATTRIBUTE, serve_metrics
from services.common.server import (
    Running,
    Server,
    announce_ready,
    catch_stop_signals,
    run_service,
    start_server,
)
from services.common.telemetry import setup_logging
from services.common.tensors import TensorSpec, spec_to_proto
from services.common.tracing import setup_tracing, shutdown_tracing
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.model_container.announcer import Announcer
from services.model_container.answer_check import AnswerCheck
from services.model_container.batcher import Batcher
from services.model_container.config import Config, configs_from_args
from services.model_container.runner import ModelRunner
from services.model_container.sdk import ModelLoadFailed, ModelSpecs
from services.model_container.servicer import ContainerServicer, Replica
from services.model_container.warmup import WarmupFailed, warm_up
from services.model_container.watchdog import EXIT_CODE, LoopWatchdog

logger = logging.getLogger(__name__)


# Longest the event loop may stand still before the container exits (--batch-timeout-s
# when set): only a model run on the loop that hangs holds it so long.
LOOP_STALL_S = 10.0


@dataclass(frozen=True)
class Container:
    """A container started in this process: serving, announced, and what stops it."""

    running: Running
    batchers: list[Batcher]  # one per model served


async def start(configs: list[Config]) -> Container:
    """Load each model, serve them all on the first config's port (0: a free one), each
    its own replica, and announce them to the frontends; ready once one knows each.

    The process's own settings (address, TLS, metrics, health, message limit, grace
    period) are the first config's (services/model_container/config.configs_from_args)."""
    cfg = configs[0]
    serve_metrics("model_container", cfg.host, cfg.metrics_port,
                  {MODEL_ATTRIBUTE: ",".join(c.name for c in configs),
                   VERSION_ATTRIBUTE: ",".join(c.version for c in configs)})
    replicas: list[Replica] = []
    try:
        for member in configs:
            replicas.append(await _load(member, labelled=len(configs) > 1))
    except (ConfigError, ModelLoadFailed, WarmupFailed):
        for replica in replicas:
            await replica.batcher.aclose()
        raise
    batchers = [replica.batcher for replica in replicas]
    # The longest stall any of the models may take on the loop (a shorter one of another
    # model's would end the process for what this one is allowed).
    watchdog = LoopWatchdog(max(c.batching.batch_timeout_s or LOOP_STALL_S for c in configs))
    await watchdog.start()
    # Frontends dial with a credential valid for one of this process's replicas only.
    credentials = {replica_credential(c.token, r.replica_id): r.replica_id
                   for c, r in zip(configs, replicas, strict=True)}
    servicer = ContainerServicer(replicas, credentials, cfg.max_message_bytes)
    frontends_only = token_auth(list(credentials), FRONTEND, "replica credential")
    server = await start_server(
        [(functools.partial(pb_grpc.add_ModelContainerServicer_to_server, servicer),
          "clipper.v1.ModelContainer")],
        cfg.host,
        cfg.port,
        max_message_bytes=cfg.max_message_bytes,
        tls=cfg.tls,
        health_port=cfg.health_port,
        interceptors=[AuthInterceptor(
            rules_for(pb.DESCRIPTOR.services_by_name["ModelContainer"], frontends_only))],
    )
    announcers = [_announcer(member, replica, f"{cfg.advertise_host}:{server.port}")
                  for member, replica in zip(configs, replicas, strict=True)]
    for announcer in announcers:
        await announcer.start()
    for member, announcer in zip(configs, announcers, strict=True):
        if member.frontends:  # ready once the model is loaded (above) and a frontend knows us
            await announcer.registered.wait()
    await server.set_serving(True)
    for member, replica in zip(configs, replicas, strict=True):
        logger.info("serving model %s version %s as replica %s", member.name, member.version,
                    replica.replica_id)

    async def stop() -> None:
        await shut_down(cfg, server, announcers, batchers)
        await watchdog.aclose()

    return Container(Running(server.port, stop), batchers)


async def _load(cfg: Config, labelled: bool) -> Replica:
    """The model of `cfg` loaded and warm, as a replica (not yet served); its metrics
    `labelled` with its name when the process serves several (else target_info names it,
    and a label would cost every record a third more)."""
    name = cfg.name if labelled else ""
    runner = ModelRunner(cfg.source, cfg.worker, cfg.batching.concurrency,
                         native_threads=cfg.native_threads, name=name)
    batcher = Batcher(runner, cfg.batching)
    await batcher.start()
    try:
        specs = _specs(cfg, runner)
        answers = AnswerCheck(cfg.output_spec, specs.outputs)
        # Before the server starts: not ready (nor reachable) until the model is warm.
        await warm_up(batcher, cfg.warmup, specs, answers)
    except (ConfigError, WarmupFailed):
        await batcher.aclose()
        raise
    return Replica(cfg.replica_id or uuid.uuid4().hex, batcher, specs.input_spec,
                   specs.inputs, answers)


def _announcer(cfg: Config, replica: Replica, address: str) -> Announcer:
    """What keeps the frontends told of `replica`, served at `address`."""
    announce = pb.AnnounceRequest(
        model=cfg.name,
        version=cfg.version,
        address=address,
        replica_id=replica.replica_id,
        # Proves to the frontends that later announces come from this process.
        replica_secret=secrets.token_urlsafe(32),
    )
    if replica.input_spec is not None:
        announce.input_spec.CopyFrom(spec_to_proto(replica.input_spec))
    announce.inputs.extend(spec_to_proto(spec) for spec in replica.inputs)
    announce.outputs.extend(spec_to_proto(spec) for spec in replica.answers.outputs)
    return Announcer(list(cfg.frontends), announce, cfg.token, cfg.heartbeat_s,
                     tls=cfg.client_tls)


def _specs(cfg: Config, runner: ModelRunner) -> ModelSpecs:
    """The specs queries are checked against and announced: --input-dtype/--input-shape
    (or a manifest's named inputs and outputs), else the model's own (an ONNX model or a
    booster says); when both are known they must agree."""
    own = runner.specs
    declared_inputs = cfg.inputs or own.inputs
    if cfg.inputs and own.inputs:
        _check_named("inputs", cfg.inputs, own.inputs)
    if cfg.outputs and own.outputs:
        _check_named("outputs", cfg.outputs, own.outputs)
    declared = cfg.input_spec
    if declared is not None and declared_inputs:
        raise ConfigError(f"--input-dtype/--input-shape declare one input, but the model "
                          f"takes named inputs {named_tensors.describe(declared_inputs)}")
    if declared is not None and own.input_spec is not None and not _compatible(
            declared, own.input_spec):
        raise ConfigError(f"--input-dtype/--input-shape say {declared.describe()}, but the "
                          f"model takes {own.input_spec.describe()} per query")
    input_spec = None if declared_inputs else declared or own.input_spec
    return ModelSpecs(input_spec, declared_inputs, cfg.outputs or own.outputs)


def _check_named(what: str, declared: tuple[TensorSpec, ...],
                 own: tuple[TensorSpec, ...]) -> None:
    mine = {spec.name: spec for spec in own}
    if set(mine) != {spec.name for spec in declared} or not all(
            _compatible(spec, mine[spec.name]) for spec in declared):
        raise ConfigError(f"the manifest's {what} ({named_tensors.describe(declared)}) do not "
                          f"match the model's ({named_tensors.describe(own)})")


def _compatible(declared: TensorSpec, own: TensorSpec) -> bool:
    return declared.dtype == own.dtype and len(declared.shape) == len(own.shape) and all(
        -1 in (a, b) or a == b for a, b in zip(declared.shape, own.shape, strict=True))


async def main(configs: list[Config]) -> int:
    """Serve until SIGTERM (exit code 0) or until a model leaves a worker stuck (70);
    exit code 2 when a model cannot be served."""
    try:
        container = await start(configs)
    except (ConfigError, ModelLoadFailed, WarmupFailed) as exc:
        logger.error("the model cannot be served: %s", exc)
        return 2
    stop = catch_stop_signals()
    announce_ready("model_container", container.running.port)
    waits = [asyncio.create_task(stop.wait())] + [
        asyncio.create_task(b.unhealthy.wait()) for b in container.batchers]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await container.running.stop()
    return EXIT_CODE if any(b.unhealthy.is_set() for b in container.batchers) else 0


async def shut_down(cfg: Config, server: Server, announcers: list[Announcer],
                    batchers: list[Batcher]) -> None:
    """Not ready; refuse new queries (frontends retry elsewhere); leave the registry;
    answer what is queued or running within the grace period; then stop."""
    await server.set_serving(False)
    drained = asyncio.gather(*(batcher.drain(cfg.grace_s) for batcher in batchers))
    for announcer in announcers:
        await announcer.aclose()
    if not all(await drained):
        logger.warning("grace period over with %d queries unanswered",
                       sum(batcher.queue_depth for batcher in batchers))
    await server.stop(1.0)  # the replies just made go out on their streams
    for batcher in batchers:
        await batcher.aclose()
    logger.info("stopped")


def exit_now(code: int) -> None:
    """Exit with `code` without waiting for worker threads: one may be stuck in the model,
    and the interpreter would join it for ever."""
    shutdown_tracing()  # the spans still buffered go out first
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        configs = configs_from_args(sys.argv[1:])
    except ConfigError as error:
        sys.exit(f"error: {error}")
    served = ",".join(f"{c.name}:{c.version}" for c in configs)
    setup_logging(f"container[{served}]", configs[0].log_level, configs[0].log_format)
    setup_tracing("model-container")
    exit_now(run_service(main(configs)))
