"""Key-value state behind one small interface; the embedded file store is the default.

Values are JSON-able dicts. Callers use `KeyValueStore` only, so another backend
(Redis) slots in without touching them.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol


class KeyValueStore(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...
    async def put(self, key: str, value: dict[str, Any]) -> None: ...
    async def delete(self, key: str) -> bool: ...
    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]: ...
    async def aclose(self) -> None: ...


class FileStore:
    """All keys in memory, written through to one JSON file atomically on every change.

    A write goes to a temporary file in the same folder, is fsynced, then renamed
    over the old file, so a crash leaves either the old or the new state, never half.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()
        if self.path.exists():
            try:
                self._data = json.loads(self.path.read_text() or "{}")
            except json.JSONDecodeError as exc:
                raise ValueError(f"state file {self.path} is not valid JSON: {exc}") from exc

    async def get(self, key: str) -> dict[str, Any] | None:
        value = self._data.get(key)
        return json.loads(json.dumps(value)) if value is not None else None

    async def put(self, key: str, value: dict[str, Any]) -> None:
        async with self._lock:
            self._data[key] = json.loads(json.dumps(value))
            await self._flush()

    async def delete(self, key: str) -> bool:
        async with self._lock:
            existed = self._data.pop(key, None) is not None
            if existed:
                await self._flush()
            return existed

    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {
            k: json.loads(json.dumps(v)) for k, v in self._data.items() if k.startswith(prefix)
        }

    async def aclose(self) -> None:
        return None

    async def _flush(self) -> None:
        text = json.dumps(self._data, sort_keys=True)
        await asyncio.to_thread(_atomic_write, self.path, text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
