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
# Weight of each message in a coalescer's moving averages of its stream's rate and of
# the items per message.
RATE_WEIGHT = 0.2
# Items per message, on average, from which a coalescer holds a message even while the
# item ready is the only one in flight: holds are filling messages.
SHARED_ITEMS = 1.5
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
        # Whether the last message left items waiting (it was full): a backlog.
        self.backlogged = False

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
        self.backlogged = bool(self._held) or not self._queue.empty()
        return items

    def _size(self, item: T) -> int:
        return 0 if self._measure is None else self._measure(item) + ITEM_FRAMING_BYTES


class Coalescer(Generic[T]):
    """How long a stream's writer holds a ready item for more to share its message: each
    message costs both ends of the stream a write, a read and a wake-up of their event
    loops whatever it carries, and a container runs the queries of one message as one
    batch.

    Holding pays only when more items come during the hold. So the writer holds (at most
    `max_wait_s`) only while items have come at least one per `max_wait_s` of late, the
    stream has not been quiet for longer than that, the last message left no backlog,
    and either another item is in flight besides the one ready (`in_flight()` counts
    both) or holds have been filling messages (SHARED_ITEMS a message of late). One
    caller at a time, which waits for each answer, is never held: its messages carry
    one item each, and nothing else is in flight. A hold ends once any item waiting
    has only `share` of its time left to go (`slack(item)`, seconds): `arrived` tells it
    of each item queued.
    """

    def __init__(self, max_wait_s: float, slack: Callable[[T], float],
                 in_flight: Callable[[], int], share: float = 0.25,
                 now: clock.Now = clock.now) -> None:
        self.max_wait_s = max_wait_s
        self._slack = slack
        self._in_flight = in_flight
        self._share = share
        self._now = now
        self.rate = 0.0  # items per second, a moving average over messages
        self.items = 1.0  # items per message, a moving average
        self._last_sent = now()
        self._send_by = 0.0  # when the hold in progress ends
        self._woken: asyncio.Event | None = None  # set when it ends sooner

    def hold_s(self, first: T) -> float:
        """How long to hold the message `first` starts (0: send it at once)."""
        if (self.rate * self.max_wait_s < 1
                or self._now() - self._last_sent > self.max_wait_s
                or (self._in_flight() < 2 and self.items < SHARED_ITEMS)):
            return 0.0
        return max(min(self.max_wait_s, self._share * self._slack(first)), 0.0)

    def arrived(self, item: T) -> None:
        """`item` was queued: a hold in progress ends by a share of its time left."""
        if self._woken is None:
            return
        send_by = self._now() + max(self._share * self._slack(item), 0.0)
        if send_by < self._send_by:
            self._send_by = send_by
            self._woken.set()

    async def hold(self, first: T) -> None:
        """Hold the message `first` starts as long as it is worth it (see the class)."""
        hold_s = self.hold_s(first)
        if hold_s <= 0:
            return
        self._send_by = self._now() + hold_s
        self._woken = asyncio.Event()
        try:
            while (left := self._send_by - self._now()) > 0:
                self._woken.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._woken.wait()
        finally:
            self._woken = None

    def sent(self, items: int) -> None:
        """A message of `items` is going out now."""
        now = self._now()
        # Over at least a quarter of a hold: messages sent back to back (a burst after a
        # quiet spell) are not a rate of millions.
        elapsed, self._last_sent = max(now - self._last_sent, self.max_wait_s / 4), now
        self.rate += (items / elapsed - self.rate) * RATE_WEIGHT
        self.items += (items - self.items) * RATE_WEIGHT


async def pump(packer: MessagePacker[T], call: _Writable,
               wrap: Callable[[list[T]], Any], coalescer: Coalescer[T] | None = None) -> None:
    """The one writer of a client stream: forever, send what waits, in order, as few
    messages as fit (`wrap` builds one message from a list of items); with a
    `coalescer`, after holding each message as long as it says, unless the last one
    left a backlog."""
    while True:
        if coalescer is not None:
            await packer.ready()
            if not packer.backlogged:
                await coalescer.hold(packer.first)
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
