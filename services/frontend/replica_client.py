"""The frontend's side of a container replica, and the stream it shares.

One long-lived stream goes to each container process (SharedStream): queries are
multiplexed by id on a StreamClient (which packs them into messages the container
accepts, reconnects, and fails waiting queries at once when the stream breaks, so
the caller may retry on another replica). A process may serve several models, each its
own replica at the same address: their queries share the stream, each naming its
replica, so that the queries of an ensemble whose models live there go out in one
message. Every response carries each replica's load. A replica's health, as its
queries went, is kept beside it for outlier ejection (services/frontend/outliers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from services.common import clock, tracing
from services.common.auth import bearer
from services.common.channels import DEFAULT_MAX_MESSAGE_BYTES
from services.common.errors import ClipperError, DeadlineExpired, error_from_code
from services.common.named_tensors import MAX_NAMED, Value
from services.common.stream_client import Metadata, StreamClient
from services.common.tls import ClientTLS
from services.frontend.outliers import ReplicaHealth
from services.frontend.records import ReplicaRecord
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

# A query's fields besides its input, at most: id and budget (varints) and their tags.
_QUERY_FIELDS_BYTES = 24


@dataclass(frozen=True)
class _Outgoing:
    """A query waiting to be written; its budget is counted then, not when it was queued."""

    id: int
    replica_id: str
    input: Value  # one tensor, or named ones
    deadline: float
    trace_context: tracing.Carrier | None = None  # when the query is traced
    size: int = field(init=False)  # encoded, as a ContainerQuery (at most)

    def __post_init__(self) -> None:
        if isinstance(self.input, pb.Tensor):
            size = self.input.ByteSize() + 6 + _QUERY_FIELDS_BYTES + len(self.replica_id)
        else:
            size = _QUERY_FIELDS_BYTES + len(self.replica_id) + sum(
                len(k.encode()) + t.ByteSize() + 12 for k, t in self.input.items())
        if self.trace_context:
            size += sum(len(k) + len(v) + 6 for k, v in self.trace_context.items())
        object.__setattr__(self, "size", size)


def _request(queries: list[_Outgoing]) -> pb.ContainerRequest:
    now = clock.now()
    return pb.ContainerRequest(queries=[_query(q, now) for q in queries])


def _query(q: _Outgoing, now: float) -> pb.ContainerQuery:
    budget_us = max(int((q.deadline - now - clock.REPLY_MARGIN_S) * 1e6), 0)
    if isinstance(q.input, pb.Tensor):
        return pb.ContainerQuery(id=q.id, input=q.input, budget_us=budget_us,
                                 trace_context=q.trace_context, replica_id=q.replica_id)
    return pb.ContainerQuery(id=q.id, inputs=q.input, budget_us=budget_us,
                             trace_context=q.trace_context, replica_id=q.replica_id)


def _size(query: _Outgoing) -> int:
    return query.size


def _slack(query: _Outgoing) -> float:
    return query.deadline - clock.now()


class SharedStream:
    """The one stream to a container process, shared by the replicas it serves (one, or
    several models in one process): each attached ReplicaClient's queries name it, and
    each response's loads go to each. It dials with the credential of the replica attached
    last (the process takes any of its replicas'; a process started again at the same
    address knows only its new ones), and ends with the last one detached."""

    def __init__(self, address: str, tls: ClientTLS | None = None,
                 receive_limit_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 coalesce_s: float = 0.0) -> None:
        """`receive_limit_bytes`: the largest reply message taken (the container packs its
        replies to fit); `coalesce_s`: the longest a query is held for others to share
        its message (services/common/streams.Coalescer)."""
        self.replicas: dict[str, ReplicaClient] = {}  # in the order attached
        self._started = self._closed = False

        def open_call(channel: grpc.aio.Channel, metadata: Metadata) -> Any:
            return pb_grpc.ModelContainerStub(channel).Predict(  # at each (re)connect
                metadata=(*bearer(self.dial_credential()), *metadata))

        self.stream: StreamClient[_Outgoing, pb.ContainerReply] = StreamClient(
            address, open_call, _request, self.unwrap, _size,
            receive_limit_bytes=receive_limit_bytes, tls=tls, kind="query",
            coalesce_s=coalesce_s, slack=_slack)

    def dial_credential(self) -> str:
        """The credential of the replica attached last."""
        return next(reversed(self.replicas.values())).credential

    @property
    def closed(self) -> bool:
        return self._closed

    def attach(self, client: ReplicaClient) -> None:
        if self._closed:
            raise RuntimeError(f"the stream to {self.stream.address} has ended")
        self.replicas[client.record.replica_id] = client

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self.stream.start()

    async def detach(self, client: ReplicaClient) -> None:
        """`client` no longer uses the stream: once no replica does, it ends."""
        replica_id = client.record.replica_id
        if self.replicas.get(replica_id) is client:
            del self.replicas[replica_id]
        if not self.replicas and not self._closed:
            self._closed = True
            await self.stream.aclose()

    def unwrap(self, response: pb.ContainerResponse) -> list[pb.ContainerReply]:
        """A response's replies; the load of each replica it reports noted."""
        if response.loads:  # several replicas in the process: each its own load
            for replica_id, load in response.loads.items():
                client = self.replicas.get(replica_id)
                if client is not None:
                    client.reported(load)
        else:
            for client in self.replicas.values():
                client.reported(response.load)
        return list(response.replies)


class ReplicaClient:
    """Sends queries to one replica over its container's stream and matches the replies."""

    def __init__(self, record: ReplicaRecord, credential: str,
                 stream: SharedStream | None = None) -> None:
        """`credential`: the replica credential (services/common/credentials.py);
        `stream`: the one to the replica's container process (at `record.address`),
        shared with its other replicas (default: a stream of its own)."""
        self.record = record
        self.credential = credential
        # As last reported by the replica with its replies.
        self.queue_depth = 0
        self.est_wait_s = 0.0
        # Our queries to this replica not yet answered, and when it last answered one
        # (clock.now(); its process may answer others' meanwhile).
        self.outstanding = 0
        self.last_heard = 0.0
        self.health = ReplicaHealth()
        self.container = stream or SharedStream(record.address)
        self._stream = self.container.stream
        self.container.attach(self)

    def reported(self, load: pb.ReplicaLoad) -> None:
        """The replica's load, as a response just said."""
        self.queue_depth = load.queue_depth
        self.est_wait_s = load.est_wait_us / 1e6

    @property
    def connected(self) -> bool:
        return self._stream.connected

    async def wait_connected(self) -> None:
        await self._stream.wait_connected()

    def ejected_for(self, now: float) -> float:
        """Seconds left of the replica's ejection (0 when it is not ejected)."""
        return self.health.ejected_for(now, self._stream.connected_at)

    def record_failure(self, sent_at: float) -> bool:
        """Count a failure (services/frontend/outliers.py); True when it should be ejected."""
        return self.health.record_failure(sent_at, self._stream.connected_at)

    def silent_since(self, moment: float) -> bool:
        """Whether no answer has come from the replica since `moment` (clock.now() time)."""
        return self.last_heard < moment

    @property
    def reconnects(self) -> int:
        """Times the stream to the replica was accepted again after the first."""
        return max(self._stream.connects - 1, 0)

    def expected_load(self) -> tuple[int, float]:
        """Queries ahead of a new one (ours in flight, or the replica's queue when longer:
        other frontends send to it too), then its reported wait to break ties."""
        return max(self.outstanding, self.queue_depth), self.est_wait_s

    async def start(self) -> None:
        await self.container.start()

    async def aclose(self) -> None:
        await self.container.detach(self)

    async def query(self, value: Value, deadline: float,
                    trace_context: tracing.Carrier | None = None) -> Value:
        """Send one query; return the replica's output or raise its error."""
        if tracing.enabled and trace_context is None and tracing.active():
            return await self._traced_query(value, deadline)
        query_id = self._stream.next_id()
        self.outstanding += 1
        try:
            reply = await self._stream.request(query_id, _Outgoing(
                query_id, self.record.replica_id, value, deadline, trace_context), deadline)
            self.last_heard = clock.now()
        except TimeoutError:
            raise DeadlineExpired(f"{self.record.address} did not answer in time") from None
        finally:
            self.outstanding -= 1
        result = reply.WhichOneof("result")
        if result == "output":
            return reply.output
        if result == "outputs":
            outputs = dict(reply.outputs.tensors)
            if not 0 < len(outputs) <= MAX_NAMED:
                raise ClipperError(f"{self.record.model} answered {len(outputs)} named outputs")
            return outputs
        raise error_from_code(reply.error.code, reply.error.message)

    async def _traced_query(self, value: Value, deadline: float) -> Value:
        """`query` in its span (`clipper.replica`), whose context the query carries."""
        with tracing.tracer().start_as_current_span(
                "clipper.replica", kind=SpanKind.CLIENT,
                attributes={"clipper.replica": self.record.address}):
            return await self.query(value, deadline, tracing.carrier() or {})

