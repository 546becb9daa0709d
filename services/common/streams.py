"""Helpers for long-lived bidi streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def drain(outbox: asyncio.Queue[T]) -> AsyncIterator[T]:
    """Yield what is put on `outbox`, forever: the request iterator of a client stream."""
    while True:
        yield await outbox.get()
