"""The three services in the test's own event loop, on ephemeral loopback ports.

The same `start(cfg)` the processes run (services/*/__main__.py), so a test drives the
real servicers over real gRPC, but without starting processes: fast enough for unit
tests of routing, membership, streams and errors, and deterministic with a gated
model (`Gate`): its batches wait until the test opens the gate, and with the
frontend's clock (`mesh.clock`: replica expiry, quotas), which moves only when the
test advances it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import numpy as np

from services.common.server import Running
from services.frontend import __main__ as frontend
from services.frontend.config import config_from_args as frontend_config
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.model_container import __main__ as container
from services.model_container.config import config_from_args as container_config
from services.selection import __main__ as selection
from services.selection.config import config_from_args as selection_config
from testkit.mesh import ENV, MGMT, container_env
from tests.helpers.clock import ManualClock


class Gate:
    """A model's batches wait here until the test opens it (`threading`: a batch runs on
    a worker thread)."""

    opened = threading.Event()
    entered = threading.Semaphore(0)  # released once per batch that reached the gate

    @classmethod
    def reset(cls) -> None:
        cls.opened = threading.Event()
        cls.entered = threading.Semaphore(0)


class GatedSum:
    """Sums each input, once the gate is open."""

    def predict_batch(self, inputs: list[np.ndarray]) -> list[Any]:
        Gate.entered.release()
        Gate.opened.wait(10)
        return [np.float64(x.sum()) for x in inputs]


@dataclass
class InProcessMesh:
    selection: Running
    frontend: Running
    clock: ManualClock
    containers: list[container.Container] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.frontend.port}"

    def management(self, channel: grpc.aio.Channel) -> Any:
        return pb_grpc.ManagementStub(channel)

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return MGMT


@asynccontextmanager
async def in_process_mesh(workdir: Path, models: Sequence[tuple[str, str]] = (),
                          *frontend_flags: str) -> AsyncIterator[InProcessMesh]:
    """Selection service, frontend and one container per (model reference, name), in
    this event loop; all stopped on exit."""
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        with mock.patch.dict(os.environ, ENV):
            sel = await selection.start(selection_config(
                ["--port", "0", "--state", str(workdir / "selection.json")]))
            stack.push_async_callback(sel.stop)
            front = await frontend.start(frontend_config(
                ["--port", "0", "--selection", f"127.0.0.1:{sel.port}",
                 "--state", str(workdir / "frontend.json"), "--cache", "none",
                 "--heartbeat-ms", "200", "--replica-ttl-s", "1.0", *frontend_flags]),
                now=clock.now)
            stack.push_async_callback(front.stop)
        mesh = InProcessMesh(sel, front, clock)
        for ref, name in models:
            with mock.patch.dict(os.environ, container_env(name)):
                cfg = container_config(["--model", ref, "--name", name, "--version", "1",
                                        "--frontend", mesh.address, "--heartbeat-s", "0.2",
                                        "--worker", "thread", "--grace-s", "1"])
            started = await container.start([cfg])
            stack.push_async_callback(started.running.stop)
            mesh.containers.append(started)
        yield mesh
