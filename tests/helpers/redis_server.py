"""The Redis server of testkit, skipped (or failed in CI) where redis-server is missing."""

from __future__ import annotations

from testkit import redis_server
from tests.helpers.tools import require_tool


class RedisServer(redis_server.RedisServer):
    @staticmethod
    def tool(name: str, why: str) -> str:
        return require_tool(name, f"{why} tests")
