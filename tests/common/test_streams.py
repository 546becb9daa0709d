"""Packing stream messages to fit the receiver, coalescing them while items come fast, and
the limits and keepalive peers agree on."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest

from services.common import channels
from services.common.streams import (
    ITEM_FRAMING_BYTES,
    MAX_ITEMS_PER_MESSAGE,
    MESSAGE_RESERVE_BYTES,
    RATE_WEIGHT,
    SHARED_ITEMS,
    Coalescer,
    MessagePacker,
    item_budget,
    pump,
)
from tests.helpers.clock import ManualClock


async def take_all(packer: MessagePacker[bytes], count: int) -> list[list[bytes]]:
    messages: list[list[bytes]] = []
    while sum(map(len, messages)) < count:
        messages.append(await asyncio.wait_for(packer.take(), 1))
    return messages


async def test_items_are_packed_in_order_into_messages_within_the_limit() -> None:
    limit = 8192
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    items = [bytes([i]) * (500 + 97 * i) for i in range(40)]  # 500 B to 4.3 KB, distinct
    for item in items:
        queue.put_nowait(item)
    messages = await take_all(MessagePacker(queue, len, limit), len(items))

    assert [item for message in messages for item in message] == items
    budget = limit - MESSAGE_RESERVE_BYTES
    for message in messages:
        assert sum(len(i) + ITEM_FRAMING_BYTES for i in message) <= budget
    # Full: each message took items until the next one did not fit.
    for message, following in itertools.pairwise(messages):
        size = sum(len(i) + ITEM_FRAMING_BYTES for i in message)
        assert size + len(following[0]) + ITEM_FRAMING_BYTES > budget


async def test_an_item_larger_than_the_limit_goes_alone_and_item_budget_says_so() -> None:
    limit = 4096
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for item in (b"a" * 10, b"b" * 5000, b"c" * 10):
        queue.put_nowait(item)
    messages = await take_all(MessagePacker(queue, len, limit), 3)
    assert messages == [[b"a" * 10], [b"b" * 5000], [b"c" * 10]]
    assert item_budget(limit) < 5000
    assert item_budget(limit) + ITEM_FRAMING_BYTES + MESSAGE_RESERVE_BYTES == limit


async def test_a_message_carries_at_most_max_items_and_without_measure_only_counts() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for _ in range(MAX_ITEMS_PER_MESSAGE + 1):
        queue.put_nowait(b"x" * 100_000)
    packer = MessagePacker(queue)
    assert len(await packer.take()) == MAX_ITEMS_PER_MESSAGE
    assert len(await packer.take()) == 1


def test_a_stated_limit_is_read_and_anything_else_means_grpcs_default() -> None:
    assert channels.stated_limit(channels.limit_metadata(262144)) == 262144
    assert channels.stated_limit([("other", "1"), (channels.LIMIT_KEY, "5000")]) == 5000
    for metadata in (None, [], [(channels.LIMIT_KEY, "lots")], [(channels.LIMIT_KEY, "0")]):
        assert channels.stated_limit(metadata) == channels.DEFAULT_MAX_MESSAGE_BYTES


def test_client_and_server_keepalive_agree() -> None:
    client = dict(channels.client_options())
    server = dict(channels.server_options(1 << 20))
    # A client's pings are never too frequent for a server (no GOAWAY "too_many_pings").
    assert (client["grpc.keepalive_time_ms"]
            >= server["grpc.http2.min_ping_interval_without_data_ms"])
    for options in (client, server):  # an unanswered ping drops the connection in time
        assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"]
        assert options["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.max_receive_message_length"] == 1 << 20
    # Options given win over the defaults.
    assert dict(channels.client_options([("grpc.keepalive_time_ms", 60_000)]))[
        "grpc.keepalive_time_ms"] == 60_000


def test_a_coalescer_holds_only_while_items_come_faster_than_its_hold() -> None:
    clock = ManualClock()
    in_flight = [2]
    coalescer: Coalescer[float] = Coalescer(0.003, slack=lambda left: left,
                                            in_flight=lambda: in_flight[0], now=clock.now)
    assert coalescer.hold_s(1.0) == 0  # nothing seen yet: no reason to hold
    for _ in range(20):  # one item every 10 ms: the next would not come within 3 ms
        clock.advance(0.010)
        coalescer.sent(1)
    assert coalescer.hold_s(1.0) == 0
    for _ in range(20):  # one every millisecond: three more within the hold
        clock.advance(0.001)
        coalescer.sent(1)
    assert coalescer.hold_s(1.0) == 0.003
    # Never more than a quarter of what the first item has left.
    assert coalescer.hold_s(0.004) == pytest.approx(0.001)
    assert coalescer.hold_s(-0.5) == 0
    in_flight[0] = 1  # the only query on the stream: one caller at a time never waits
    assert coalescer.hold_s(1.0) == 0
    for _ in range(10):  # unless holds have been filling messages
        clock.advance(0.001)
        coalescer.sent(3)
    assert coalescer.items > SHARED_ITEMS
    assert coalescer.hold_s(1.0) == 0.003
    clock.advance(0.004)  # quiet for longer than the hold: the stream is not busy now
    assert coalescer.hold_s(1.0) == 0


def test_a_burst_after_a_quiet_spell_is_not_a_high_rate() -> None:
    clock = ManualClock()
    coalescer: Coalescer[float] = Coalescer(0.003, slack=lambda left: left,
                                            in_flight=lambda: 2, now=clock.now)
    clock.advance(5.0)
    coalescer.sent(1)
    coalescer.sent(1)  # back to back: counted over a quarter of a hold, not no time
    assert coalescer.rate <= 2 * RATE_WEIGHT * 4 / 0.003


class Recorder:
    def __init__(self) -> None:
        self.sent: list[list[int]] = []

    async def write(self, request: list[int]) -> None:
        self.sent.append(request)


def busy(max_wait_s: float, slack: Callable[[int], float]) -> Coalescer[int]:
    """A coalescer whose stream has been busy: several in flight, items coming fast."""
    coalescer: Coalescer[int] = Coalescer(max_wait_s, slack=slack, in_flight=lambda: 5)
    coalescer.rate = 1000.0
    return coalescer


async def test_pump_sends_items_that_come_during_the_hold_in_one_message() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    call = Recorder()
    writer = asyncio.create_task(pump(MessagePacker(queue), call, list,
                                      busy(0.05, lambda _: 1.0)))
    try:
        for i in range(5):
            queue.put_nowait(i)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.1)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    assert call.sent == [[0, 1, 2, 3, 4]]


async def test_an_item_with_little_time_left_ends_the_hold() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    call = Recorder()
    coalescer = busy(5.0, lambda item: 60.0 if item == 0 else 0.02)  # 1: 20 ms left
    writer = asyncio.create_task(pump(MessagePacker(queue), call, list, coalescer))
    try:
        queue.put_nowait(0)
        await asyncio.sleep(0.01)  # held: 0 has a minute left
        assert call.sent == []
        queue.put_nowait(1)
        coalescer.arrived(1)  # a quarter of its 20 ms: sent within 5 ms, not 5 s
        for _ in range(200):
            if call.sent:
                break
            await asyncio.sleep(0.01)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    assert call.sent == [[0, 1]]


async def test_no_hold_while_the_last_message_left_a_backlog() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for item in (b"a" * 3000, b"b" * 3000, b"c" * 3000):  # one per message
        queue.put_nowait(item)
    sent_at: list[float] = []

    class Timed:
        async def write(self, request: list[bytes]) -> None:
            sent_at.append(time.monotonic())

    packer = MessagePacker(queue, len, 4096 + MESSAGE_RESERVE_BYTES)
    writer = asyncio.create_task(pump(packer, Timed(), list, busy(0.2, lambda _: 60.0)))
    try:
        for _ in range(300):
            if len(sent_at) == 3:
                break
            await asyncio.sleep(0.01)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    # The first message was held; the two that were waiting behind it went at once
    # (held too, they would be 0.2 s apart).
    assert len(sent_at) == 3
    assert sent_at[2] - sent_at[0] < 0.1
