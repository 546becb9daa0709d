"""How long a new call waits inside gRPC core before any handler sees it.

grpc.aio takes calls from gRPC core one at a time, about once every three turns of
the event loop. Measured on the 2-core development machine: a bare grpc.aio server
that answers 900 calls/s at a p99 of 1.5 ms takes only about 290 calls/s once each
turn of its loop also runs a 1 ms callback, whatever the number of server objects or
the interpreter's switch interval. So when the loop's turns grow long (a loaded loop,
or a machine short of CPU), calls queue inside gRPC core, where neither a handler
nor a timer on the loop can see them, and every refusal comes too late.

The probe sees that queue: every PERIOD_S while the service is in use, it calls
the server's own health check through a Unix socket bound to the same server (the
same queue of calls), and times the answer. While an answer is outstanding, the wait
so far counts, so a queue that grows is seen at once. A probe costs the process
about 0.8 ms of CPU: 100 a second while calls wait over BUSY_WAIT_S, 25 otherwise
(at 300 queries a second, about 0.07 ms a query).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import clock
from services.common.tasks import BackgroundTask

# Probes come every PERIOD_S, and every BUSY_PERIOD_S while the last one waited over
# BUSY_WAIT_S: a queue that starts to form is followed closely, an idle one costs little.
PERIOD_S = 0.04
BUSY_PERIOD_S = 0.01
BUSY_WAIT_S = 0.003
TIMEOUT_S = 1.0


class AcceptProbe:
    """Times the server's own health check at `address` (a `unix:` address of the same
    server); `wait_s` is the latest time to answer, or the wait of the one outstanding.

    `in_use` says whether to probe now (an idle service is not probed)."""

    def __init__(self, address: str, in_use: Callable[[], bool]) -> None:
        self.address = address
        self._in_use = in_use
        self._last_s = 0.0
        self._sent = 0.0
        self._task = BackgroundTask("accept probe", self._run, restart_s=1.0)

    @property
    def wait_s(self) -> float:
        pending = clock.now() - self._sent if self._sent else 0.0
        return max(self._last_s, pending)

    async def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()
        self._last_s = self._sent = 0.0

    async def _run(self) -> None:
        try:
            async with grpc.aio.insecure_channel(self.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    await asyncio.sleep(BUSY_PERIOD_S if self._last_s > BUSY_WAIT_S
                                        else PERIOD_S)
                    if not self._in_use():
                        self._last_s = 0.0
                        continue
                    await self._probe(stub)
        finally:  # stopped or failed (restarted by its task): no wait is left pending
            self._last_s = self._sent = 0.0

    async def _probe(self, stub: health_pb2_grpc.HealthStub) -> None:
        self._sent = clock.now()
        refused = False
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:  # timed out: the wait counts
            # Refused at once (the server's own limit of calls in flight): no new measure.
            refused = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            waited, self._sent = clock.now() - self._sent, 0.0
        self._last_s = max(self._last_s, waited) if refused else waited
