"""Announces this replica to the frontends and keeps announcing on a heartbeat.

The frontends say how often (their `--heartbeat-ms`, which their replica TTL is
set against); until one has answered, and between retries, the container's own
`--heartbeat-s` applies.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.common.auth import bearer
from services.common.tasks import BackgroundTask
from services.common.tls import ClientTLS, ReloadingChannel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


class Announcer:
    """Heartbeats `Registry.Announce` to every frontend; deregisters on close."""

    def __init__(
        self,
        frontends: list[str],
        announce: pb.AnnounceRequest,
        token: str,
        interval_s: float,
        tls: ClientTLS | None = None,
    ) -> None:
        self.frontends = frontends
        self.announce = announce
        self.token = token
        self.interval_s = interval_s
        self.registered = asyncio.Event()
        # One per frontend; rebuilt from the TLS files when they change (rotation).
        self._channels = [ReloadingChannel(addr, tls) for addr in frontends]
        self._task = BackgroundTask("announcer", self._run, restart_s=interval_s)

    async def start(self) -> None:
        self._task.start()

    async def _run(self) -> None:
        while True:
            asked = await asyncio.gather(*(self._announce_once(ch) for ch in self._channels))
            intervals = [ms / 1000 for ms in asked if ms]
            if any(ms is not None for ms in asked):
                self.registered.set()
            await asyncio.sleep(min(intervals, default=self.interval_s))

    async def _announce_once(self, channel: ReloadingChannel) -> int | None:
        """The heartbeat interval the frontend asks for (ms, 0: none), or None on failure."""
        address = channel.target
        try:
            stub = pb_grpc.RegistryStub(await channel.get())
            reply = await stub.Announce(
                self.announce, metadata=bearer(self.token), timeout=max(self.interval_s, 1.0)
            )
            return int(reply.heartbeat_ms)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                logger.error("frontend %s refused this container: %s", address, exc.details())
            else:
                logger.warning("announce to %s failed: %s", address, exc.code().name)
            return None
        except OSError as exc:
            logger.error("cannot dial frontend %s: %s", address, exc)
            return None

    async def aclose(self) -> None:
        """Stop heartbeating and tell every frontend this replica is gone."""
        await self._task.aclose()
        request = pb.DeregisterRequest(replica_id=self.announce.replica_id,
                                       replica_secret=self.announce.replica_secret)
        for channel in self._channels:
            try:
                await pb_grpc.RegistryStub(await channel.get()).Deregister(
                    request, metadata=bearer(self.token), timeout=1.0
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:  # stopped first (make run)
                    logger.info("frontend %s gone before this replica's deregister; it "
                                "drops the replica when its heartbeats stop", channel.target)
                else:
                    logger.warning("deregister from %s failed: %s", channel.target,
                                   exc.code().name)
            except OSError as exc:
                logger.warning("deregister from %s failed: %s", channel.target, exc)
            await channel.aclose()
