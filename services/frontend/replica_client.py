"""One long-lived stream from this frontend to one container replica.

Queries are multiplexed by id on a StreamClient (which reconnects and fails
waiting queries at once when the stream breaks, so the caller may retry on
another replica). Every response also carries the replica's load.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common import clock
from services.common.auth import bearer
from services.common.errors import DeadlineExpired, error_from_code
from services.common.stream_client import StreamClient
from services.common.tls import ClientTLS
from services.frontend.registry import ReplicaRecord
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Kept back from the budget a container is given: the reply's way back and combining.
REPLY_RESERVE_S = 0.002


@dataclass(frozen=True)
class _Outgoing:
    """A query waiting to be written; its budget is counted then, not when it was queued."""

    id: int
    input: pb.Tensor
    deadline: float
    trace: dict[str, str]


def _request(queries: list[_Outgoing]) -> pb.ContainerRequest:
    now = clock.now()
    return pb.ContainerRequest(queries=[
        pb.ContainerQuery(id=q.id, input=q.input, trace_context=q.trace,
                          budget_us=max(int((q.deadline - now - REPLY_RESERVE_S) * 1e6), 0))
        for q in queries
    ])


class ReplicaClient:
    """Sends queries to one replica over one stream and matches the replies."""

    def __init__(self, record: ReplicaRecord, credential: str,
                 tls: ClientTLS | None = None) -> None:
        """`credential`: the replica credential (services/common/credentials.py)."""
        self.record = record
        # As last reported by the replica with its replies.
        self.queue_depth = 0
        self.est_wait_s = 0.0
        self._stream: StreamClient[_Outgoing, pb.ContainerReply] = StreamClient(
            record.address,
            lambda channel: pb_grpc.ModelContainerStub(channel).Predict(
                metadata=bearer(credential)),
            _request,
            self._unwrap,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
            tls=tls,
        )

    @property
    def connected(self) -> bool:
        return self._stream.connected

    async def wait_connected(self) -> None:
        await self._stream.wait_connected()

    @property
    def outstanding(self) -> int:
        return self._stream.outstanding

    def expected_load(self) -> tuple[int, float]:
        """Queries ahead of a new one (ours in flight, or the replica's queue when longer:
        other frontends send to it too), then its reported wait to break ties."""
        return max(self.outstanding, self.queue_depth), self.est_wait_s

    async def start(self) -> None:
        await self._stream.start()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def query(self, value: pb.Tensor, deadline: float, trace: dict[str, str]) -> pb.Tensor:
        """Send one query; return the replica's output or raise its error."""
        query_id = self._stream.next_id()
        try:
            reply = await self._stream.request(
                query_id, _Outgoing(query_id, value, deadline, trace), deadline)
        except TimeoutError:
            raise DeadlineExpired(f"{self.record.address} did not answer in time") from None
        if reply.WhichOneof("result") == "output":
            return reply.output
        raise error_from_code(reply.error.code, reply.error.message)

    def _unwrap(self, response: pb.ContainerResponse) -> list[pb.ContainerReply]:
        self.queue_depth = response.load.queue_depth
        self.est_wait_s = response.load.est_wait_us / 1e6
        return list(response.replies)
