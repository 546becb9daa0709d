"""The frontend's connections to live replicas, kept in step with the registry.

`sync` opens a ReplicaClient for each new replica and closes those that left.
`query` sends to a connected replica of the model's active version, the
less loaded of two picked at random (power of two choices, on queries ahead
and reported wait), and retries another replica when the first one's stream
breaks or it rejects the query as overloaded, while the deadline allows.
"""

from __future__ import annotations

import asyncio
import logging
import random

from services.common import clock
from services.common.credentials import container_token, replica_credential
from services.common.errors import ClipperError, Overloaded, Unavailable
from services.common.tls import ClientTLS
from services.frontend.registry import Registry
from services.frontend.replica_client import ReplicaClient
from services.generated.clipper.v1 import clipper_pb2 as pb

logger = logging.getLogger(__name__)


class ReplicaTable:
    def __init__(self, registry: Registry, mesh_secret: str, sync_interval_s: float = 0.25,
                 tls: ClientTLS | None = None) -> None:
        self.registry = registry
        self.mesh_secret = mesh_secret
        self.tls = tls  # how replicas are dialled (TLS when enabled)
        self.sync_interval_s = sync_interval_s
        self.clients: dict[str, ReplicaClient] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.create_task(self._run(), name="replica-table")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            try:
                await self.registry.expire_replicas()
                await self.sync()
            except Exception:
                logger.exception("replica table sync failed")

    async def sync(self) -> None:
        """Open clients for new replicas (or moved ones) and close those that left."""
        wanted = self.registry.replicas
        for rid in [rid for rid, c in self.clients.items() if wanted.get(rid) != c.record]:
            await self.clients.pop(rid).aclose()
        for rid, record in wanted.items():
            if rid not in self.clients:
                # Valid for this replica only: whoever listens at the address learns
                # nothing that would open another replica's stream.
                credential = replica_credential(
                    container_token(self.mesh_secret, record.model), rid)
                client = ReplicaClient(record, credential, self.tls)
                await client.start()
                self.clients[rid] = client

    def candidates(self, model: str, version: str = "") -> list[ReplicaClient]:
        """Connected replicas of the model's active version (or of `version`)."""
        return [
            self.clients[r.replica_id]
            for r in self.registry.replicas_of(model, version)
            if r.replica_id in self.clients and self.clients[r.replica_id].connected
        ]

    async def query(
        self, model: str, value: pb.Tensor, deadline: float, trace: dict[str, str],
        version: str = "",
    ) -> tuple[str, pb.Tensor]:
        """Answer from one replica of `model` (active version, or `version`).

        Returns ("name:version", output)."""
        tried: set[str] = set()
        last_error: ClipperError | None = None
        while True:
            replicas = [c for c in self.candidates(model, version)
                        if c.record.replica_id not in tried]
            if not replicas:
                if tried and last_error is not None:
                    raise last_error
                pinned = f" version {version!r}" if version else ""
                raise Unavailable(f"no live replica of model {model!r}{pinned}")
            client = choose(replicas)
            tried.add(client.record.replica_id)
            try:
                output = await client.query(value, deadline, trace)
            except (Unavailable, Overloaded) as exc:
                if clock.now() >= deadline:
                    raise
                last_error = exc
                continue  # broken stream or full queue: try another replica
            return f"{model}:{client.record.version}", output


def choose(replicas: list[ReplicaClient]) -> ReplicaClient:
    """Power of two choices: the less loaded of two random replicas."""
    if len(replicas) <= 2:
        return min(replicas, key=ReplicaClient.expected_load)
    return min(random.sample(replicas, 2), key=ReplicaClient.expected_load)
