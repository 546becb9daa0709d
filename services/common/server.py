"""The one way to build a grpc.aio server: health, reflection, message limits, keepalive,
graceful stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import uvloop
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.channels import DEFAULT_MAX_MESSAGE_BYTES, server_options
from services.common.config import at_least, flag
from services.common.interceptors import RejectUndecodable
from services.common.tls import ServerTLS, server_credentials

logger = logging.getLogger(__name__)

READY_PREFIX = "CLIPPER_READY"
T = TypeVar("T")


class MethodAwarePool:
    """The default descriptor pool, also resolving a method's full name
    ("pkg.Service.Method") to its service's file.

    ghz asks reflection for the file of the method it calls; the pool grpcio's
    reflection servicer uses resolves services and messages only (grpc/grpc#34743).
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        try:
            found: FileDescriptor = self._pool.FindFileContainingSymbol(symbol)
            return found
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise
            file: FileDescriptor = service.file
            return file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


@dataclass
class Server:
    """A started server with its health servicer and the port it bound."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: tuple[str, ...]
    # The plaintext health-only server (`health_port`), when there is one.
    health_server: grpc.aio.Server | None = None
    health_port: int = -1
    # A Unix socket of this same server, private to this process's user, that
    # services/common/accept_probe.py calls through (`probe_socket`); "" when none.
    probe_address: str = ""

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def drain(self, grace_s: float | None) -> None:
        """Not ready (load balancers stop sending), refuse new calls, and let those in
        flight finish within `grace_s`."""
        await self.set_serving(False)
        if grace_s is None or grace_s > 0:  # no grace: stop at once
            await self._take_queued_calls(DRAIN_TAKE_S if grace_s is None
                                          else min(grace_s, DRAIN_TAKE_S))
        await self.stop(grace_s)

    async def _take_queued_calls(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until the calls that wait inside gRPC core now have
        been taken by this server: a stop fails those it finds there (CANCELLED),
        although their clients sent them before it.

        grpc.aio takes calls from gRPC core one at a time, in the order they came, so
        once a health check sent now through the probe socket is answered, the calls
        that came before it are being served."""
        if not self.probe_address:
            return
        try:
            async with grpc.aio.insecure_channel(self.probe_address) as channel:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            logger.warning("draining: calls queued in gRPC core not all taken (%s)",
                           exc.code().name)

    async def stop(self, grace_s: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self.health_server is not None:
            await self.health_server.stop(None)
        if self.probe_address:
            shutil.rmtree(os.path.dirname(self.probe_address.removeprefix("unix:")),
                          ignore_errors=True)


# How long a drain waits for the calls queued inside gRPC core to be taken, at most.
DRAIN_TAKE_S = 2.0

# The smallest --max-message-bytes: a message must hold a query and its framing.
MIN_MESSAGE_BYTES = 4096


def max_message_bytes_flag() -> Any:
    """--max-message-bytes: what `start_server(max_message_bytes=...)` receives and sends.

    A container or selection service states it to the frontends that open streams to it,
    and they pack their messages to fit (services/common/channels.py)."""
    return flag(DEFAULT_MAX_MESSAGE_BYTES, "largest gRPC message received or sent",
                check=at_least(MIN_MESSAGE_BYTES))


async def start_server(
    add_servicers: Iterable[tuple[Callable[[grpc.aio.Server], None], str]],
    host: str,
    port: int,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: ServerTLS | None = None,
    health_port: int = -1,
    probe_socket: bool = False,
    reuse_port: bool = False,
) -> Server:
    """Start a server on `host:port` (0 picks a free port), with TLS when `tls` is given.

    `add_servicers` holds `(add_to_server, full service name)` pairs. Health reports
    NOT_SERVING until the caller says `set_serving(True)`. With `health_port` >= 0, a
    second, plaintext server on that port answers health checks only (the same status),
    for probes that cannot speak TLS, such as Kubernetes' gRPC probes. With
    `probe_socket`, the server also listens on a Unix socket in a directory only this
    user can enter, for its own accept probe (`Server.probe_address`). With
    `reuse_port`, both ports are bound with SO_REUSEPORT, so that several processes of
    this user serve them and the kernel spreads connections over them (frontend
    workers); otherwise a port in use is an error.
    """
    reuse = [("grpc.so_reuseport", int(reuse_port))]
    server = grpc.aio.server(
        interceptors=[RejectUndecodable(), *interceptors],
        options=server_options(max_message_bytes, reuse),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    names: list[str] = []
    for add, name in add_servicers:
        add(server)
        names.append(name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
        pool=MethodAwarePool(descriptor_pool.Default()),
    )
    address = f"{host}:{port}"
    bound = (server.add_secure_port(address, server_credentials(tls)) if tls
             else server.add_insecure_port(address))
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    probe_address = ""
    if probe_socket:
        probe_dir = tempfile.mkdtemp(prefix="clipper-probe-")  # only this user may enter
        probe_address = f"unix:{probe_dir}/accept.sock"
        if server.add_insecure_port(probe_address) == 0:
            shutil.rmtree(probe_dir, ignore_errors=True)
            raise OSError(f"could not bind {probe_address}")
    try:
        health_server, health_bound = None, -1
        if health_port >= 0:
            health_server = grpc.aio.server(
                options=server_options(DEFAULT_MAX_MESSAGE_BYTES, reuse))
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            health_bound = health_server.add_insecure_port(f"{host}:{health_port}")
            if health_bound == 0:
                raise OSError(f"could not bind the health port {host}:{health_port}")
            await health_server.start()
            logger.info("health checks (plaintext, health only) on port %d", health_bound)
        await server.start()
    except BaseException:
        if probe_address:  # a start that failed leaves no socket behind
            shutil.rmtree(os.path.dirname(probe_address.removeprefix("unix:")),
                          ignore_errors=True)
        raise
    result = Server(server, health_servicer, bound, tuple(names), health_server, health_bound,
                    probe_address)
    await result.set_serving(False)
    return result


@dataclass(frozen=True)
class Running:
    """A service started in this process: its port, and how to stop it (the steps of
    its start undone in reverse)."""

    port: int
    stop: Callable[[], Awaitable[None]]
    health_port: int = -1  # the plaintext health-only port, when there is one


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """Run a service's main coroutine to the end, on uvloop.

    Every query crosses the event loop several times (grpc.aio wakes it for each
    message read or written); uvloop's loop costs less CPU per wake-up than asyncio's
    own, which at the knee of the `make run` mesh (250 q/s) was the difference
    between about half and about 80% of queries in time.
    """
    return uvloop.run(main)


def announce_ready(service: str, port: int) -> None:
    """Startup is over: freeze what it allocated out of the garbage collector's sight,
    then print the line launchers wait for and log the bound port.

    A service holds hundreds of thousands of objects from its imports (grpc, numpy,
    protobuf, a model's framework) and its model. Every full collection scanned them
    all again, 30-80 ms with scikit-learn loaded, during which every query in flight
    stalled; frozen, they are never scanned, and a full collection only walks what
    serving allocated since.
    """
    freeze_startup()
    print(f"{READY_PREFIX} service={service} port={port}", flush=True)
    logger.info("%s listening on port %d", service, port)


def freeze_startup() -> None:
    """Collect once, then keep what startup allocated out of later collections' sight
    (see `announce_ready`)."""
    gc.collect()
    gc.freeze()


def catch_stop_signals(on_again: Callable[[], None] | None = None) -> asyncio.Event:
    """From now on, the first SIGTERM or SIGINT sets the event returned, and a second
    calls `on_again` (default: exit at once). Call it before announcing ready: a launcher
    may signal as soon as it reads that line, and a signal with no handler yet kills the
    process undrained."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
        elif on_again is not None:
            on_again()
        else:
            raise SystemExit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    return stop
