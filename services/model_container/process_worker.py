"""Worker processes that run a model's batches: one socket round trip per batch.

Each worker is a spawned process that loads the model itself from its reference
and then serves batches over its own socket pair, one at a time. A batch whose
inputs share one numeric dtype and shape travels as one header and the raw bytes
of the stacked inputs, and the model gets views into the received buffer: no
pickling, no copy per input, and no thread between the event loop and the
socket (the loop reads the answer itself). Outputs of one numeric dtype and
shape come back the same way; named inputs and outputs (dicts) go name by name,
each stacked the same way; anything else (strings, ragged shapes) is pickled.
The hand-off costs one write and one wake-up of the loop; a sub-millisecond
model pays about as much as a hand-off to a worker thread.

A worker that does not answer within the batch's timeout is killed, one whose
process died is noticed by its socket closing; either is replaced by a new
process (the model loaded again) while the others keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import socket
import struct
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from services.common.errors import Unavailable
from services.model_container.sdk import (
    ModelLoadFailed,
    ModelSource,
    ModelSpecs,
    as_source,
    specs_of,
)

logger = logging.getLogger(__name__)

# Every message: the length of a pickled header tuple, the header, then a payload
# whose length the header's last field gives.
_LENGTH = struct.Struct("!I")
# Longest a worker may take to load the model before it is given up.
LOAD_TIMEOUT_S = 300.0


class ModelHung(Unavailable):
    """A batch did not finish within its timeout (the frontend may ask another replica)."""


class WorkerDied(Unavailable):
    """The worker process running a batch died (the frontend may ask another replica)."""


class WorkerLoadFailed(ModelLoadFailed):
    """A worker process could not load the model (or run a first batch with it)."""


# ------------------------------------------------------------ wire format


def encode_batch(values: Sequence[Any]) -> tuple[tuple[Any, ...], memoryview | bytes]:
    """(header, payload): raw bytes when every value is an array or numpy scalar of one
    numeric dtype and shape; for dicts of one set of names (named inputs or outputs),
    each name stacked on its own the same way, one after the other; else a pickle."""
    first = values[0] if values else None
    if isinstance(first, np.ndarray | np.generic) and first.dtype.kind in "biufc":
        kind, dtype, shape = type(first), first.dtype, first.shape
        # `is` first: arrays of one builtin dtype share its dtype object.
        if all(type(v) is kind and (v.dtype is dtype or v.dtype == dtype)
               and v.shape == shape for v in values):
            stacked = np.array(values, dtype=dtype)  # faster than np.stack
            scalars = kind is not np.ndarray
            raw = stacked.reshape(-1).view(np.uint8).data
            return ("raw", dtype.str, shape, scalars, stacked.nbytes), raw
    elif isinstance(first, dict) and first:
        named = _encode_named(values, tuple(first))
        if named is not None:
            return named
    pickled = pickle.dumps(list(values), protocol=pickle.HIGHEST_PROTOCOL)
    return ("pickle", len(pickled)), pickled


def _encode_named(values: Sequence[Any], names: tuple[str, ...],
                  ) -> tuple[tuple[Any, ...], bytes] | None:
    """("named", names, per-name headers, size): each name's column as `encode_batch`
    sends it; None unless every value is a dict of exactly `names`."""
    if not all(type(v) is dict and len(v) == len(names) and all(n in v for n in names)
               for v in values):
        return None
    headers, payloads = [], []
    for name in names:
        header, payload = encode_batch([v[name] for v in values])
        headers.append(header)
        payloads.append(payload)
    body = b"".join(payloads)
    return ("named", names, tuple(headers), len(body)), body


def decode_batch(header: tuple[Any, ...], payload: bytearray | memoryview) -> list[Any]:
    """The values `encode_batch` sent: views into `payload` for raw arrays."""
    if header[0] == "raw":
        _, dtype, shape, scalars, _ = header
        stacked = np.frombuffer(payload, dtype=np.dtype(dtype)).reshape((-1, *shape))
        if shape or scalars:
            return list(stacked)  # row views, or numpy scalars
        return [stacked[i, ...] for i in range(len(stacked))]  # 0-d arrays
    if header[0] == "named":
        _, names, headers, _ = header
        view, offset, columns = memoryview(payload), 0, []
        for sub in headers:
            columns.append(decode_batch(sub, view[offset:offset + sub[-1]]))
            offset += sub[-1]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    values: list[Any] = pickle.loads(payload)
    return values


def _message(header: tuple[Any, ...], payload: memoryview | bytes) -> bytes:
    """One message in one buffer (one write, one wake-up of the reader)."""
    pickled = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    return b"".join((_LENGTH.pack(len(pickled)), pickled, payload))


# ------------------------------------------------------------ the worker process


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n
    return buffer


def _send(sock: socket.socket, header: tuple[Any, ...], payload: memoryview | bytes) -> None:
    sock.sendall(_message(header, payload))


def serve(sock: socket.socket, source: ModelSource, native_threads: int) -> None:
    """The worker process: load the model, say so (with its input spec, if it has one),
    then answer batches until EOF."""
    from services.model_container.runner import limit_native_threads

    try:
        limit_native_threads(native_threads)
        model = source.load(native_threads)
    except BaseException as exc:
        _send(sock, ("load_failed", f"{type(exc).__name__}: {exc}", 0), b"")
        return
    _send(sock, ("ready", specs_of(model), 0), b"")
    while True:
        try:
            (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
            header = pickle.loads(_recv_exactly(sock, length))
            inputs = decode_batch(header, _recv_exactly(sock, header[-1]))
        except EOFError:
            return
        try:
            outputs = list(model.predict_batch(inputs))
            reply, payload = encode_batch(outputs)
        except Exception as exc:
            reply, payload = _error(exc)
        _send(sock, ("ok", *reply) if reply[0] != "error" else reply, payload)


def _error(exc: Exception) -> tuple[tuple[Any, ...], bytes]:
    try:
        payload = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(payload)
    except Exception:
        payload = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return ("error", len(payload)), payload


# ------------------------------------------------------------ the event loop's side


class ProcessWorker:
    """One worker process and the loop's end of its socket."""

    def __init__(self, source: ModelSource, native_threads: int) -> None:
        self.source = source
        self.native_threads = native_threads
        self.specs = ModelSpecs()
        self._process: BaseProcess | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.broken = False

    async def start(self) -> None:
        """Spawn the process (not fork: a forked child would inherit gRPC's threads and
        locks) and wait until it has loaded the model. Raises WorkerLoadFailed."""
        ours, theirs = socket.socketpair()
        ctx = multiprocessing.get_context("spawn")
        self._process = ctx.Process(target=serve, name="model-worker", daemon=True,
                                    args=(theirs, self.source, self.native_threads))
        try:
            await asyncio.to_thread(self._process.start)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._reader, self._writer = await asyncio.open_connection(sock=ours)
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                header, _ = await self._read()
        except (EOFError, TimeoutError) as exc:
            self.kill()
            raise WorkerLoadFailed("the worker process exited or hung while loading the "
                                   "model") from exc
        if header[0] != "ready":
            self.kill()
            raise WorkerLoadFailed(f"the worker process could not load the model: {header[1]}")
        self.specs = header[1]

    async def run(self, inputs: list[Any], timeout_s: float | None) -> list[Any]:
        """One batch; raises the model's exception, ModelHung or WorkerDied."""
        assert self._writer is not None
        header, payload = encode_batch(inputs)
        try:
            self._writer.write(_message(header, payload))
            async with asyncio.timeout(timeout_s):
                reply, body = await self._read()
        except TimeoutError:
            self.kill()
            raise ModelHung(f"the model did not answer a batch of {len(inputs)} within "
                            f"{timeout_s:.3g} s") from None
        except (EOFError, ConnectionError) as exc:
            self.kill()
            raise WorkerDied("the worker process running the model died") from exc
        if reply[0] == "error":
            raise pickle.loads(body)
        return decode_batch(reply[1:], body)

    async def _read(self) -> tuple[tuple[Any, ...], bytearray]:
        assert self._reader is not None
        try:
            (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
            header = pickle.loads(await self._reader.readexactly(length))
            body = bytearray(await self._reader.readexactly(header[-1])) if header[-1] else \
                bytearray()
        except asyncio.IncompleteReadError as exc:
            raise EOFError from exc
        return header, body

    def kill(self) -> None:
        """End the process at once (it may be inside the model) and close the socket."""
        self.broken = True
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        if self._writer is not None:
            self._writer.close()


class ProcessPool:
    """`size` warm worker processes; a batch goes to an idle one, or waits for one."""

    def __init__(self, source: ModelSource | str, size: int, native_threads: int) -> None:
        self.source = as_source(source)
        self.size = size
        self.native_threads = native_threads
        self._idle: asyncio.Queue[ProcessWorker] = asyncio.Queue()
        self._workers: list[ProcessWorker] = []
        self._replacing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the model (WorkerLoadFailed
        if one could not; the others are stopped)."""
        workers = [ProcessWorker(self.source, self.native_threads) for _ in range(self.size)]
        self._workers = workers
        results = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            self.close()
            raise failed[0]
        for worker in workers:
            self._idle.put_nowait(worker)

    @property
    def specs(self) -> ModelSpecs:
        """The model's specs, as the worker processes loaded it."""
        return self._workers[0].specs if self._workers else ModelSpecs()

    async def run(self, inputs: list[Any], timeout_s: float | None) -> list[Any]:
        try:
            async with asyncio.timeout(timeout_s):
                worker = await self._idle.get()
        except TimeoutError:
            raise WorkerDied(f"no worker process was ready within {timeout_s:.3g} s (one "
                             "is being restarted)") from None
        try:
            return await worker.run(inputs, timeout_s)
        finally:
            if worker.broken:
                self._replace(worker)
            else:
                self._idle.put_nowait(worker)

    def _replace(self, worker: ProcessWorker) -> None:
        """Start a new process in place of `worker` (in the background: batches meanwhile
        go to the other workers, or wait)."""
        logger.error("restarting a worker process of the model")

        async def replace() -> None:
            fresh = ProcessWorker(self.source, self.native_threads)
            self._workers = [fresh if w is worker else w for w in self._workers]
            while True:
                try:
                    await fresh.start()
                    break
                except WorkerLoadFailed:
                    logger.exception("a worker process could not load the model; retrying")
                    await asyncio.sleep(1.0)
            self._idle.put_nowait(fresh)

        task = asyncio.create_task(replace(), name="replace-worker")
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    def close(self) -> None:
        """Kill every worker process without waiting for a batch."""
        for task in self._replacing:
            task.cancel()
        for worker in self._workers:
            worker.kill()
