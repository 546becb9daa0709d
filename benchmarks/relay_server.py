"""The mesh's shape with no query logic: what the hops alone cost, to compare the mesh with.

`python -m benchmarks.relay_server --stream-echo` serves the container stream
(`ModelContainer/Predict`) and answers every query of a message with its input, in one
message. `python -m benchmarks.relay_server --upstream HOST:PORT[,HOST:PORT...]` serves
`Frontend/Predict` and relays each query over one long-lived stream to every upstream
(`--copies N` times to each: an ensemble of N models served by one process), packing
every query waiting into one message, and answers once all upstreams have. No
validation, selection, admission, metrics or combining: a query costs gRPC alone, over
the same processes and messages as the mesh's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import AsyncIterator

import grpc

from benchmarks.echo_server import serve_bare
from services.common.server import run_service
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc


class StreamEcho(pb_grpc.ModelContainerServicer):
    async def Predict(self, request_iterator: AsyncIterator[pb.ContainerRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ContainerResponse]:
        async for message in request_iterator:
            yield pb.ContainerResponse(replies=[
                pb.ContainerReply(id=q.id, output=q.input) for q in message.queries])


class Upstream:
    """One stream to a stream-echo server: queries packed as they wait, replies matched."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.waiting: asyncio.Queue[pb.ContainerQuery] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[pb.ContainerReply]] = {}
        self.ids = itertools.count(1)
        self.call = pb_grpc.ModelContainerStub(self.channel).Predict(self._messages())
        self.reader = asyncio.create_task(self._read())

    async def ask(self, tensor: pb.Tensor) -> pb.ContainerReply:
        query_id = next(self.ids)
        future: asyncio.Future[pb.ContainerReply] = asyncio.get_running_loop().create_future()
        self.pending[query_id] = future
        self.waiting.put_nowait(pb.ContainerQuery(id=query_id, input=tensor))
        try:
            return await future
        finally:
            self.pending.pop(query_id, None)

    async def _messages(self) -> AsyncIterator[pb.ContainerRequest]:
        while True:
            queries = [await self.waiting.get()]
            while not self.waiting.empty():
                queries.append(self.waiting.get_nowait())
            yield pb.ContainerRequest(queries=queries)

    async def _read(self) -> None:
        async for message in self.call:
            for reply in message.replies:
                future = self.pending.pop(reply.id, None)
                if future is not None and not future.done():  # else its caller gave up
                    future.set_result(reply)


class Relay(pb_grpc.FrontendServicer):
    def __init__(self, upstreams: list[Upstream], copies: int) -> None:
        self.upstreams = upstreams * copies

    async def Predict(self, request: pb.PredictRequest,
                      context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        replies = await asyncio.gather(*(u.ask(request.input) for u in self.upstreams))
        return pb.PredictResponse(query_id=request.query_id, output=replies[0].output)


async def main(port: int, upstream: str, copies: int) -> None:
    if upstream:
        relay = Relay([Upstream(address) for address in upstream.split(",")], copies)
        await serve_bare(lambda server: pb_grpc.add_FrontendServicer_to_server(relay, server),
                         "clipper.v1.Frontend", "relay", port)
    else:
        await serve_bare(
            lambda server: pb_grpc.add_ModelContainerServicer_to_server(StreamEcho(), server),
            "clipper.v1.ModelContainer", "stream-echo", port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--upstream", default="", help="stream-echo addresses to relay to")
    mode.add_argument("--stream-echo", action="store_true")
    parser.add_argument("--copies", type=int, default=1, help="times each query goes to each")
    args = parser.parse_args()
    run_service(main(args.port, args.upstream, args.copies))  # the same event loop as the services
