"""Waiting for an application that was just registered somewhere to be served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc


async def served_within(ask: Callable[[], Awaitable[object]], app: str,
                        limit_s: float) -> float:
    """Seconds until `ask()` (a query to `app`) is answered instead of NOT_FOUND; fails
    past `limit_s`."""
    started = time.monotonic()
    while True:
        try:
            await ask()
            return time.monotonic() - started
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            assert time.monotonic() - started < limit_s, f"{app} not served in {limit_s} s"
            await asyncio.sleep(0.02)
