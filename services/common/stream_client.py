"""A long-lived client bidi stream that multiplexes requests by id and reconnects.

The frontend keeps one to each container replica and one to the selection
service. A caller sends an item carrying a fresh id and awaits the reply with
the same id. The one writer task sends whatever is waiting, as few messages as
fit the limit the server stated when it accepted the stream (its initial
metadata; services/common/channels.py); an item too large for any message fails
alone, at once, with INVALID_ARGUMENT. One reader resolves the replies. When the
stream breaks, every waiting caller fails at once with Unavailable and the
client reconnects with backoff (the longest after the server refused our token)
until it is closed. With TLS, each reconnect uses the certificate files as they
are then (rotated ones included).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

import grpc

from services.common import clock
from services.common.channels import (
    DEFAULT_MAX_MESSAGE_BYTES,
    limit_metadata,
    stated_limit,
)
from services.common.errors import InvalidInput, Unavailable
from services.common.streams import Coalescer, MessagePacker, item_budget, pump
from services.common.tasks import BackgroundTask
from services.common.tls import ClientTLS, ReloadingChannel

logger = logging.getLogger(__name__)

# Longest a connection and the server's acceptance of the stream may take.
CONNECT_TIMEOUT_S = 2.0
MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0

Metadata = tuple[tuple[str, str], ...]


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


Item = TypeVar("Item")
Reply = TypeVar("Reply", bound=_HasId)


class StreamClient(Generic[Item, Reply]):
    """`open_call(channel, metadata)` starts the stream, with `metadata` added to the
    call's own; `wrap(items)` builds one request message; `unwrap(response)` yields the
    replies a response message carries; `measure(item)` is an item's encoded size.

    `receive_limit_bytes`: the largest response message accepted, stated to the server.
    `kind` names an item in errors ("query"). `coalesce_s`: the longest the writer holds
    an item for others to share its message, `slack(item)` the seconds it has left
    (services/common/streams.Coalescer; 0: never held).
    """

    def __init__(
        self,
        address: str,
        open_call: Callable[[grpc.aio.Channel, Metadata], Any],
        wrap: Callable[[list[Item]], Any],
        unwrap: Callable[[Any], Iterable[Reply]],
        measure: Callable[[Item], int],
        receive_limit_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: ClientTLS | None = None,
        kind: str = "request",
        coalesce_s: float = 0.0,
        slack: Callable[[Item], float] | None = None,
    ) -> None:
        self.address = address
        self.kind = kind
        # The largest message the server receives, as it stated on accepting the stream.
        self.send_limit_bytes = DEFAULT_MAX_MESSAGE_BYTES
        # When the current stream was accepted (clock.now(); 0 before the first).
        self.connected_at = 0.0
        # Streams accepted so far (more than one: it reconnected).
        self.connects = 0
        self._connected = asyncio.Event()
        self._open_call = open_call
        self._wrap = wrap
        self._unwrap = unwrap
        self._measure = measure
        self._coalescer = (Coalescer(coalesce_s, slack, lambda: len(self._pending))
                           if coalesce_s > 0 and slack is not None else None)
        self._metadata = limit_metadata(receive_limit_bytes)
        self._channels = ReloadingChannel(
            address, tls, [("grpc.max_receive_message_length", receive_limit_bytes)])
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._ids = itertools.count(1)
        self._outbox: asyncio.Queue[Item] = asyncio.Queue()
        self._task = BackgroundTask(f"stream to {address}", self._run, restart_s=MAX_BACKOFF_S)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()
        self._fail_pending(f"stream to {self.address} closed")
        await self._channels.aclose()

    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, request_id: int, item: Item, timeout_at: float | None = None) -> Reply:
        """Send `item` (which carries `request_id`) and return the reply with that id.

        Raises InvalidInput when `item` is larger than any message the server receives."""
        if not self.connected:
            raise Unavailable(f"{self.address} is not connected")
        size, budget = self._measure(item), item_budget(self.send_limit_bytes)
        if size > budget:
            raise InvalidInput(
                f"{self.kind} of {size} bytes does not fit the {self.send_limit_bytes}-byte "
                f"messages {self.address} receives ({budget} bytes at most for one "
                f"{self.kind}; that service's --max-message-bytes)")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._outbox.put_nowait(item)
        if self._coalescer is not None:
            self._coalescer.arrived(item)
        try:
            async with asyncio.timeout_at(timeout_at):
                return await future
        finally:
            self._pending.pop(request_id, None)

    async def _run(self) -> None:
        backoff_s = MIN_BACKOFF_S
        while True:
            try:
                await self._serve()
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED):
                    logger.error("%s refused us: %s", self.address, exc.details())
                    backoff_s = MAX_BACKOFF_S
                elif self.connected:
                    logger.warning("stream to %s broke: %s %s", self.address, exc.code().name,
                                   exc.details())
                    backoff_s = MIN_BACKOFF_S
            except TimeoutError:
                pass  # not reachable yet (or the TLS handshake fails)
            except OSError as exc:
                logger.error("cannot dial %s: %s", self.address, exc)
                backoff_s = MAX_BACKOFF_S
            finally:
                self._connected.clear()
                self._fail_pending(f"lost the stream to {self.address}")
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    async def _serve(self) -> None:
        channel = await self._channels.get()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await channel.channel_ready()
        call = self._open_call(channel, self._metadata)
        writer: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                # The server accepted the stream (and our token), and said what it receives.
                metadata = await call.initial_metadata()
            self.send_limit_bytes = stated_limit(metadata)
            self._outbox = asyncio.Queue()
            writer = asyncio.create_task(pump(
                MessagePacker(self._outbox, self._measure, self.send_limit_bytes),
                call, self._wrap, self._coalescer))
            self.connected_at = clock.now()
            self.connects += 1
            self._connected.set()
            logger.info("connected to %s (messages up to %d bytes)", self.address,
                        self.send_limit_bytes)
            async for response in call:
                for reply in self._unwrap(response):
                    future = self._pending.get(reply.id)
                    if future is not None and not future.done():
                        future.set_result(reply)  # else the caller gave up before it came
        finally:
            call.cancel()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    def _fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable(message))
