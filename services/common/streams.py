"""Helpers for long-lived bidi streams."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class _Writable(Protocol):
    async def write(self, request: Any) -> None: ...


async def pump(outbox: asyncio.Queue[T], call: _Writable) -> None:
    """The one writer of a client stream: send what is put on `outbox`, in order, forever."""
    while True:
        await call.write(await outbox.get())
