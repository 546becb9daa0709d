"""Fixtures for multi-process tests: trained digits models, and a channel to the module's mesh.

Each test module defines a module-scoped `mesh` fixture (testkit/mesh.py);
`channel` and `stub` talk to its frontend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.mesh import digits
from testkit.mesh import Mesh


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example models, trained once per test session."""
    return digits.train(tmp_path_factory.mktemp("models"))


@pytest.fixture
async def channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.FrontendStub:
    return pb_grpc.FrontendStub(channel)
