"""`python -m services.selection --port 1338 --state FILE|redis://HOST:PORT/DB`."""

from __future__ import annotations

import contextlib
import functools

from services.common.admission import Admission, export_metrics
from services.common.auth import FRONTEND, AuthInterceptor, rules_for, token_auth
from services.common.metrics import meter, serve_metrics
from services.common.server import (
    Running,
    announce_ready,
    catch_stop_signals,
    run_service,
    start_server,
)
from services.common.stores import open_store
from services.common.telemetry import setup_logging
from services.common.tracing import setup_tracing
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.selection import metrics, weights
from services.selection.config import Config, config_from_args
from services.selection.decider import Decider
from services.selection.servicer import SelectionServicer


async def start(cfg: Config) -> Running:
    """Start the selection service on `cfg.port` (0: a free one), serving; `stop()` it."""
    stack = contextlib.AsyncExitStack()
    serve_metrics("selection", cfg.host, cfg.metrics_port)
    store = open_store(cfg.state, cfg.max_contexts)
    stack.push_async_callback(store.aclose)
    admission = Admission(cfg.admission)
    export_metrics(admission, meter("clipper.selection"))
    decider = Decider(store, cfg.context_ttl_s, cfg.max_contexts, cfg.versions_kept)
    metrics.watch_states(decider.memory.sizes)
    metrics.watch_weights(functools.partial(weights.current_weights, decider))
    servicer = SelectionServicer(decider, admission)
    server = await start_server(
        [(functools.partial(pb_grpc.add_SelectionServicer_to_server, servicer),
          "clipper.v1.Selection")],
        cfg.host,
        cfg.port,
        tls=cfg.tls,
        health_port=cfg.health_port,
        interceptors=[AuthInterceptor(rules_for(  # frontends only
            pb.DESCRIPTOR.services_by_name["Selection"],
            token_auth(cfg.token, FRONTEND, "selection")))],
    )
    await decider.start()  # ready: the state store answers (retried while it does not)
    stack.push_async_callback(decider.aclose)
    await admission.lag.start()
    stack.push_async_callback(admission.lag.aclose)
    stack.push_async_callback(server.drain, cfg.grace_s)
    await server.set_serving(True)
    return Running(server.port, stack.aclose)


async def main(cfg: Config) -> None:
    running = await start(cfg)
    stop = catch_stop_signals()
    announce_ready("selection", running.port)
    try:
        await stop.wait()
    finally:
        await running.stop()


if __name__ == "__main__":
    config = config_from_args()
    setup_logging("selection", config.log_level, config.log_format)
    setup_tracing("selection")
    run_service(main(config))
