"""`python -m services.frontend --port 1337 --selection HOST:PORT`."""

from __future__ import annotations

import contextlib
import functools
import logging

from services.common import clock
from services.common.admission import Admission, export_metrics
from services.common.auth import (
    MANAGEMENT,
    Authenticator,
    AuthInterceptor,
    api_key_auth,
    container_auth,
    rules_for,
    token_auth,
)
from services.common.credentials import selection_token
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
from services.frontend import metrics
from services.frontend.access_log import AccessLog
from services.frontend.config import Config, config_from_args
from services.frontend.inference_plane import InferencePlane
from services.frontend.inference_servicer import InferenceServicer
from services.frontend.management_servicer import ManagementServicer, RegistryServicer
from services.frontend.model_router import ModelRouter
from services.frontend.prediction_cache import PredictionCache
from services.frontend.query_path import QueryPath
from services.frontend.quotas import Quotas
from services.frontend.registry import Registry
from services.frontend.replica_table import ReplicaTable
from services.frontend.selection_client import SelectionClient
from services.frontend.servicer import FrontendServicer
from services.frontend.workers import serve_workers
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc

logger = logging.getLogger(__name__)

# Longest a worker of a pool waits for its streams to the known replicas before it
# binds the shared port (replicas that are gone do not hold it longer).
WORKER_CONNECT_S = 2.0


async def start(cfg: Config, now: clock.Now = clock.now) -> Running:
    """Start the frontend on `cfg.port` (0: a free one), serving; `stop()` it after.
    Replicas expire, and quota buckets refill, on the clock `now`."""
    stack = contextlib.AsyncExitStack()
    serve_metrics("frontend", cfg.host, cfg.metrics_port)
    store = open_store(cfg.state)
    stack.push_async_callback(store.aclose)
    registry = Registry(store, cfg.replica_ttl_s, cfg.limits, now=now)
    await registry.start()
    stack.push_async_callback(registry.aclose)
    replicas = ReplicaTable(registry, cfg.mesh_secret,
                            cfg.client_tls.with_server_name(cfg.tls_container_name),
                            cfg.max_message_bytes, cfg.coalesce_s)
    metrics.watch_mesh(replicas)
    selection = SelectionClient(cfg.selection, selection_token(cfg.mesh_secret),
                                tls=cfg.client_tls)
    cache = PredictionCache.open(cfg.cache, cfg.cache_size, cfg.cache_ttl_s)
    stack.push_async_callback(cache.aclose)
    admission = Admission(cfg.admission)
    export_metrics(admission, meter("clipper.frontend"))
    router = ModelRouter(registry, replicas, cache)
    query_path = QueryPath(registry, router, selection, cache, cfg.limits, admission,
                           Quotas(cfg.quotas, now), AccessLog(cfg.access_log_sample))
    await replicas.start()
    stack.push_async_callback(replicas.aclose)
    if cfg.reuse_port:
        # A worker of a pool takes connections as soon as it binds the shared port: its
        # streams to the replicas the shared store knows come first.
        if missing := await replicas.wait_connected(WORKER_CONNECT_S):
            logger.warning("serving with %d replica stream(s) not connected yet", missing)
    server = await start_server(
        [
            (functools.partial(pb_grpc.add_FrontendServicer_to_server,
                               FrontendServicer(query_path)), "clipper.v1.Frontend"),
            (functools.partial(oip_grpc.add_GRPCInferenceServiceServicer_to_server,
                               InferenceServicer(InferencePlane(registry, router, query_path,
                                                                cfg.limits))),
             "inference.GRPCInferenceService"),
            (functools.partial(pb_grpc.add_ManagementServicer_to_server,
                               ManagementServicer(registry, router, selection)),
             "clipper.v1.Management"),
            (functools.partial(pb_grpc.add_RegistryServicer_to_server,
                               RegistryServicer(registry, cfg.heartbeat_ms)),
             "clipper.v1.Registry"),
        ],
        cfg.host,
        cfg.port,
        max_message_bytes=cfg.max_message_bytes,
        max_concurrent_rpcs=cfg.max_concurrent_rpcs,
        tls=cfg.tls,
        health_port=cfg.health_port,
        interceptors=[AuthInterceptor(auth_rules(cfg))],
        probe_socket=True,
        reuse_port=cfg.reuse_port,
    )
    await selection.start()
    stack.push_async_callback(selection.aclose)
    await admission.lag.start()
    stack.push_async_callback(admission.lag.aclose)
    stack.push_async_callback(server.drain, cfg.grace_s)
    if cfg.admission.mode != "off":  # a baseline without admission measures nothing
        probe = admission.attach_probe(server.probe_address)
        await probe.start()
        stack.push_async_callback(probe.aclose)
    await server.set_serving(True)
    return Running(server.port, stack.aclose, server.health_port)


async def main(cfg: Config) -> None:
    running = await start(cfg)
    stop = catch_stop_signals()
    announce_ready("frontend", running.port)
    try:
        await stop.wait()
    finally:
        await running.stop()


def auth_rules(cfg: Config) -> dict[str, Authenticator]:
    """Management: the management token; Registry: a model's container token; the
    query API: an application's API key, when it has some (checked per application)."""
    services = pb.DESCRIPTOR.services_by_name
    return {
        **rules_for(services["Management"],
                    token_auth(cfg.management_token, MANAGEMENT, "management")),
        **rules_for(services["Registry"], container_auth(cfg.mesh_secret)),
        **rules_for(services["Frontend"], api_key_auth),
        "/inference.GRPCInferenceService/ModelInfer": api_key_auth,
    }


if __name__ == "__main__":
    config = config_from_args()
    setup_logging("frontend", config.log_level, config.log_format)
    if config.workers > 1:
        raise SystemExit(run_service(serve_workers(
            config, functools.partial(announce_ready, "frontend"))))
    setup_tracing("frontend")
    run_service(main(config))
