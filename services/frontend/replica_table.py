"""The frontend's connections to live replicas, kept in step with the registry.

`sync`, run whenever the registry says its replicas changed (the registry owns
membership and expiry), opens a ReplicaClient for each new replica and closes those
that left.
`query` sends to a connected replica of the model's active version, the
less loaded of two picked at random (power of two choices, on queries ahead
and reported wait), leaving out replicas ejected as outliers
(services/frontend/outliers.py). It asks another replica, while the deadline
allows, when the first one fails (its stream breaks, it is unavailable or
overloaded, or it says the query cannot make its deadline there), and also
when the first has not answered by HEDGE_AFTER_SHARE of the time the query had:
the first answer wins and the other attempt is cancelled. Hedges are budgeted
(HedgeBudget) so that they never add more than a tenth to the replicas' load.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass

from services.common import clock
from services.common.channels import DEFAULT_MAX_MESSAGE_BYTES
from services.common.credentials import container_token, replica_credential
from services.common.errors import ClipperError, DeadlineExpired, Overloaded, Unavailable
from services.common.named_tensors import Value
from services.common.tasks import BackgroundTask
from services.common.tls import ClientTLS
from services.frontend import metrics
from services.frontend.registry import Registry
from services.frontend.replica_client import ReplicaClient, SharedStream

logger = logging.getLogger(__name__)

# Share of a query's time after which, with no answer yet, another replica is asked too.
HEDGE_AFTER_SHARE = 0.5
# Hedges earned per query, and the most saved up.
HEDGE_RATIO = 0.1
HEDGE_BURST = 10.0
# Errors after which another replica may answer in time.
RETRYABLE = (Unavailable, Overloaded, DeadlineExpired)


class HedgeBudget:
    """A token bucket: each query earns HEDGE_RATIO of a hedge, up to HEDGE_BURST saved;
    a hedge spends one. When every replica is slow, hedging cannot double the load."""

    def __init__(self) -> None:
        self.tokens = HEDGE_BURST

    def earn(self) -> None:
        self.tokens = min(self.tokens + HEDGE_RATIO, HEDGE_BURST)

    def spend(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(frozen=True)
class ReplicaStatus:
    """How a replica's connection stands, as this frontend sees it."""

    connected: bool = False
    outstanding: int = 0  # queries sent, not yet answered
    queue_depth: int = 0  # queries waiting there (its last report)
    est_wait_s: float = 0.0  # its estimated wait for a new query (its last report)
    ejected_s: float = 0.0  # left out as an outlier for this long still


class ReplicaTable:
    def __init__(self, registry: Registry, mesh_secret: str, tls: ClientTLS | None = None,
                 receive_limit_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 coalesce_s: float = 0.0) -> None:
        """`receive_limit_bytes`: the largest reply message taken (the frontend's
        --max-message-bytes); each container packs its replies to fit. `coalesce_s`:
        the frontend's --coalesce-ms (services/common/streams.Coalescer)."""
        self.registry = registry
        self.mesh_secret = mesh_secret
        self.tls = tls  # how replicas are dialled (TLS when enabled)
        self.receive_limit_bytes = receive_limit_bytes
        self.coalesce_s = coalesce_s
        self.clients: dict[str, ReplicaClient] = {}
        self.hedges = HedgeBudget()
        self._changed = asyncio.Event()
        registry.on_replicas_changed(self._changed.set)
        self._task = BackgroundTask("replica table", self._follow, restart_s=1.0)

    async def start(self) -> None:
        await self.sync()
        self._task.start()

    async def wait_connected(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for the streams to the replicas known now to connect;
        return how many are not connected by then (one per container process)."""
        streams = {c.container.stream for c in self.clients.values()}
        waits = [asyncio.create_task(s.wait_connected()) for s in streams]
        if not waits:
            return 0
        _, pending = await asyncio.wait(waits, timeout=timeout_s)
        for task in pending:
            task.cancel()
        return len(pending)

    async def aclose(self) -> None:
        await self._task.aclose()
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()

    async def _follow(self) -> None:
        """Reconcile each time the registry's replicas change."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self.sync()

    async def sync(self) -> None:
        """Open clients for new replicas (or moved ones) and close those that left. The
        replicas at one address (models served by one process) share its stream."""
        wanted = self.registry.replicas
        for rid in [rid for rid, c in self.clients.items() if wanted.get(rid) != c.record]:
            await self.clients.pop(rid).aclose()
        streams = {c.record.address: c.container for c in self.clients.values()}
        for rid, record in wanted.items():
            if rid not in self.clients:
                # Valid for this replica only: whoever listens at the address learns
                # nothing that would open another process's stream.
                credential = replica_credential(
                    container_token(self.mesh_secret, record.model), rid)
                stream = streams.get(record.address)
                if stream is None:
                    stream = streams[record.address] = SharedStream(
                        record.address, self.tls, self.receive_limit_bytes, self.coalesce_s)
                client = ReplicaClient(record, credential, stream)
                await client.start()
                self.clients[rid] = client

    def status(self, replica_id: str) -> ReplicaStatus:
        client = self.clients.get(replica_id)
        if client is None:
            return ReplicaStatus()
        return ReplicaStatus(client.connected, client.outstanding, client.queue_depth,
                             client.est_wait_s, client.ejected_for(clock.now()))

    def candidates(self, model: str, version: str = "") -> list[ReplicaClient]:
        """Connected replicas of the model's active version (or of `version`)."""
        return [
            self.clients[r.replica_id]
            for r in self.registry.replicas_of(model, version)
            if r.replica_id in self.clients and self.clients[r.replica_id].connected
        ]

    async def query(
        self, model: str, value: Value, deadline: float, version: str = "",
    ) -> tuple[str, Value]:
        """Answer from one replica of `model` (active version, or `version`).

        Returns ("name:version", output)."""
        self.hedges.earn()
        live = self.candidates(model, version)
        if len(live) == 1:  # no other replica to hedge to or retry on: no task to race
            return f"{model}:{live[0].record.version}", await self._attempt(
                live[0], value, deadline)
        tried: set[str] = set()
        attempts: dict[asyncio.Task[Value], ReplicaClient] = {}
        last_error: ClipperError | None = None
        hedge_at, hedged = math.inf, False  # one hedge at most

        def attempt(client: ReplicaClient) -> None:
            tried.add(client.record.replica_id)
            task = asyncio.create_task(self._attempt(client, value, deadline))
            attempts[task] = client

        try:
            while True:
                now = clock.now()
                if not attempts:  # the first pick, or a retry (on replicas live now)
                    client = self._pick(self.candidates(model, version) if tried else live,
                                        tried, allow_ejected=True)
                    if client is None:
                        if last_error is not None:
                            raise last_error
                        pinned = f" version {version!r}" if version else ""
                        raise Unavailable(f"no live replica of model {model!r}{pinned}")
                    attempt(client)
                    if not hedged:
                        hedge_at = now + HEDGE_AFTER_SHARE * (deadline - now)
                elif now >= hedge_at:
                    hedge_at, hedged = math.inf, True
                    other = self._pick(self.candidates(model, version), tried,
                                       allow_ejected=False)
                    if other is not None and self.hedges.spend():
                        attempt(other)
                        metrics.hedges.add(1, {"model": model})
                timeout = None if hedge_at == math.inf else max(hedge_at - now, 0.0)
                done, _ = await asyncio.wait(attempts, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    client = attempts.pop(task)
                    try:
                        output = task.result()
                    except RETRYABLE as exc:
                        if clock.now() >= deadline:
                            raise
                        last_error = exc  # another replica may answer in time
                        continue
                    return f"{model}:{client.record.version}", output
        finally:
            for task in attempts:
                task.cancel()  # the other attempt lost the race, or the caller gave up

    def _pick(self, live: list[ReplicaClient], tried: set[str],
              allow_ejected: bool) -> ReplicaClient | None:
        """One of the `live` replicas not tried yet; an ejected one only when no other is
        left and `allow_ejected` (a degraded replica is better than none)."""
        now = clock.now()
        fresh = [c for c in live if c.record.replica_id not in tried]
        serving = [c for c in fresh if not c.ejected_for(now)]
        pool = serving or (fresh if allow_ejected else [])
        return choose(pool) if pool else None

    async def _attempt(self, client: ReplicaClient, value: Value,
                       deadline: float) -> Value:
        """Ask one replica, and keep its record: an answer, or a failure (see outliers.py)."""
        sent_at = clock.now()
        patience_end = sent_at + HEDGE_AFTER_SHARE * (deadline - sent_at)
        try:
            output = await client.query(value, deadline)
        except Unavailable:
            self._failed(client, sent_at)
            raise
        except (DeadlineExpired, asyncio.CancelledError):
            # Unanswered past our patience, and not a word from it since: a failure.
            if clock.now() >= patience_end and client.silent_since(sent_at):
                self._failed(client, sent_at)
            raise
        client.health.record_success()
        return output

    def _failed(self, client: ReplicaClient, sent_at: float) -> None:
        """Count a failure; eject the replica when it has failed too often, unless that
        would leave fewer than half of its model's connected replicas serving."""
        if not client.record_failure(sent_at):
            return
        now = clock.now()
        record = client.record
        peers = self.candidates(record.model, record.version)
        ejected = sum(1 for c in peers if c is not client and c.ejected_for(now))
        if ejected + 1 > len(peers) // 2:
            return
        backoff_s = client.health.eject(now)
        metrics.replica_ejections.add(1, {"model": record.model})
        logger.warning("replica %s of %s:%s at %s ejected for %.1f s (failed %s)",
                       record.replica_id, record.model, record.version, record.address,
                       backoff_s, "again on probation" if client.health.ejections > 1
                       else "repeatedly")


def choose(replicas: list[ReplicaClient]) -> ReplicaClient:
    """Power of two choices: the less loaded of two random replicas."""
    if len(replicas) <= 2:
        return min(replicas, key=ReplicaClient.expected_load)
    return min(random.sample(replicas, 2), key=ReplicaClient.expected_load)
