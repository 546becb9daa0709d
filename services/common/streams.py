"""Helpers for long-lived bidi streams that multiplex many small messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# Most items one stream message carries.
MAX_ITEMS_PER_MESSAGE = 256


class _Writable(Protocol):
    async def write(self, request: Any) -> None: ...


def take_waiting(first: T, queue: asyncio.Queue[T]) -> list[T]:
    """`first` and whatever else is already waiting in `queue` (bounded), without waiting."""
    items = [first]
    while len(items) < MAX_ITEMS_PER_MESSAGE and not queue.empty():
        items.append(queue.get_nowait())
    return items


async def pump(outbox: asyncio.Queue[T], call: _Writable,
               wrap: Callable[[list[T]], Any]) -> None:
    """The one writer of a client stream: forever, send what waits on `outbox`, in order,
    as few messages as possible (`wrap` builds one message from a list of items)."""
    while True:
        await call.write(wrap(take_waiting(await outbox.get(), outbox)))


async def replies_until_done(replies: asyncio.Queue[T | None],
                             reader: asyncio.Task[None]) -> AsyncIterator[list[T]]:
    """The writer of a server stream: the replies waiting, a list at a time, until
    `reader` puts None (it read the stream to its end and answered everything); then
    surface the reader's errors. Cancels the reader if the stream ends first."""
    try:
        while (first := await replies.get()) is not None:
            batch = take_waiting(first, replies)
            yield [r for r in batch if r is not None]
            if batch[-1] is None:
                break
        await reader
    finally:
        reader.cancel()


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
