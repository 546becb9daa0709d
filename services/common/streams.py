"""Helpers for long-lived bidi streams that multiplex many small messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from services.common.channels import limit_metadata, stated_limit

T = TypeVar("T")

# Most items one stream message carries.
MAX_ITEMS_PER_MESSAGE = 256
# Counted for each item beyond its own size: its field tag and length prefix.
ITEM_FRAMING_BYTES = 6
# Kept back from a message's limit for what it carries besides its items (a replica's
# load, say) and gRPC's own framing.
MESSAGE_RESERVE_BYTES = 1024


class _Writable(Protocol):
    async def write(self, request: Any) -> None: ...


def encoded_size(message: Message | None) -> int:
    """A message's size on the wire (None, which ends a reply stream, is nothing)."""
    return 0 if message is None else message.ByteSize()


def item_budget(limit_bytes: int) -> int:
    """The largest item (by its own encoded size) a message of `limit_bytes` can carry."""
    return limit_bytes - MESSAGE_RESERVE_BYTES - ITEM_FRAMING_BYTES


class MessagePacker(Generic[T]):
    """Takes what waits on a queue a message's worth at a time: at most
    MAX_ITEMS_PER_MESSAGE items, and no more than `limit_bytes` once encoded.

    `measure` gives an item's encoded size (`encoded_size` for protobuf messages);
    without it, only items are counted. An item that does not fit waits for the next
    message; one too large for any message is the producer's to refuse (see
    `item_budget`), and goes out alone.
    """

    def __init__(self, queue: asyncio.Queue[T], measure: Callable[[T], int] | None = None,
                 limit_bytes: int = 0) -> None:
        self._queue = queue
        self._measure = measure
        self._budget = limit_bytes - MESSAGE_RESERVE_BYTES if measure else 0
        self._held: list[T] = []  # taken from the queue, for the next message

    async def take(self) -> list[T]:
        """The next message's items, in order; waits for the first one."""
        first = self._held.pop() if self._held else await self._queue.get()
        items, size = [first], self._size(first)
        while len(items) < MAX_ITEMS_PER_MESSAGE and not self._queue.empty():
            item = self._queue.get_nowait()
            item_size = self._size(item)
            if self._measure is not None and size + item_size > self._budget:
                self._held.append(item)
                break
            items.append(item)
            size += item_size
        return items

    def _size(self, item: T) -> int:
        return 0 if self._measure is None else self._measure(item) + ITEM_FRAMING_BYTES


async def pump(packer: MessagePacker[T], call: _Writable,
               wrap: Callable[[list[T]], Any]) -> None:
    """The one writer of a client stream: forever, send what waits, in order, as few
    messages as fit (`wrap` builds one message from a list of items)."""
    while True:
        await call.write(wrap(await packer.take()))


async def replies_until_done(replies: MessagePacker[T | None],
                             reader: asyncio.Task[None]) -> AsyncIterator[list[T]]:
    """The writer of a server stream: the replies waiting, a message's worth at a time,
    until the reader puts None on the queue (it read the stream to its end and answered
    everything); then surface the reader's errors. Cancels the reader if the stream
    ends first."""
    try:
        while True:
            batch = await replies.take()
            items = [r for r in batch if r is not None]
            if items:
                yield items
            if len(items) < len(batch):
                break
        await reader
    finally:
        reader.cancel()


async def accept_stream(context: grpc.aio.ServicerContext, max_message_bytes: int) -> int:
    """Accept a client's stream, stating the largest message this server receives (in the
    initial metadata); return the largest it may send back: its own limit, or the
    client's when the client stated a lower one."""
    await context.send_initial_metadata(limit_metadata(max_message_bytes))
    return min(max_message_bytes, stated_limit(context.invocation_metadata()))


@contextlib.asynccontextmanager
async def answering(replies: asyncio.Queue[Any]) -> AsyncIterator[set[asyncio.Future[Any]]]:
    """The reader of a server stream: the body reads requests and adds what answers them
    (tasks or futures, which may discard themselves when done) to the set it is given.
    When the body ends, those still running are awaited; however it ends, any left are
    cancelled and None tells the writer (`replies_until_done`) that no reply follows."""
    in_flight: set[asyncio.Future[Any]] = set()
    try:
        yield in_flight
        if in_flight:
            await asyncio.wait(in_flight)
    finally:
        for future in in_flight:
            future.cancel()
        replies.put_nowait(None)
