"""Helpers for long-lived bidi streams that multiplex many small messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from services.common import clock
from services.common.channels import limit_metadata, stated_limit

T = TypeVar("T")

# Most items one stream message carries.
MAX_ITEMS_PER_MESSAGE = 256
# Counted for each item beyond its own size: its field tag and length prefix.
ITEM_FRAMING_BYTES = 6
# Weight of each message's rate in a coalescer's moving average of its stream's rate.
RATE_WEIGHT = 0.2
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

    async def ready(self) -> None:
        """Wait until an item is there to take (then `first` is it)."""
        if not self._held:
            self._held.append(await self._queue.get())

    @property
    def first(self) -> T:
        """The item the next message starts with (after `ready`)."""
        return self._held[-1]

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


class Coalescer(Generic[T]):
    """How long a stream's writer waits, once an item is ready, for more items to share
    its message: each message costs both ends of the stream a write, a read and a wake-up
    of their event loops whatever it carries, and a container runs the queries of one
    message as one batch.

    Waiting pays only while items come faster than the wait. So the writer waits
    `max_wait_s` only while the stream's recent rate brings at least one more item within
    it and the stream has not been quiet for longer than that, and never more than
    `share` of the time the first item has left (`slack(item)`, seconds); otherwise it
    sends at once, as it does when items come slowly.
    """

    def __init__(self, max_wait_s: float, slack: Callable[[T], float],
                 share: float = 0.25, now: clock.Now = clock.now) -> None:
        self.max_wait_s = max_wait_s
        self._slack = slack
        self._share = share
        self._now = now
        self.rate = 0.0  # items per second, a moving average over messages
        self._last_sent = now()

    def wait_s(self, first: T) -> float:
        """How long to wait before taking the next message, `first` its first item."""
        if (self.rate * self.max_wait_s < 1
                or self._now() - self._last_sent > self.max_wait_s):
            return 0.0
        return max(min(self.max_wait_s, self._share * self._slack(first)), 0.0)

    def sent(self, items: int) -> None:
        """A message of `items` is going out now."""
        now = self._now()
        elapsed, self._last_sent = max(now - self._last_sent, 1e-6), now
        self.rate += (items / elapsed - self.rate) * RATE_WEIGHT


async def pump(packer: MessagePacker[T], call: _Writable,
               wrap: Callable[[list[T]], Any], coalescer: Coalescer[T] | None = None) -> None:
    """The one writer of a client stream: forever, send what waits, in order, as few
    messages as fit (`wrap` builds one message from a list of items); with a
    `coalescer`, after waiting as long as it says for more items to share the message."""
    while True:
        if coalescer is not None:
            await packer.ready()
            wait_s = coalescer.wait_s(packer.first)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        items = await packer.take()
        if coalescer is not None:
            coalescer.sent(len(items))
        await call.write(wrap(items))


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
