"""A bare grpc.aio server that answers Predict with its input: the gRPC limit to compare with.

`python -m benchmarks.echo_server --port 0` prints the usual ready line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection

from services.common.server import (
    MethodAwarePool,
    announce_ready,
    catch_stop_signals,
    run_service,
)
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc


class EchoFrontend(pb_grpc.FrontendServicer):
    async def Predict(self, request: pb.PredictRequest,
                      context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        return pb.PredictResponse(query_id=request.query_id, output=request.input)


async def serve_bare(add: Callable[[grpc.aio.Server], None], service: str, label: str,
                     port: int) -> None:
    """Serve `service` (registered by `add`) on 127.0.0.1:`port` with no interceptor, no
    health and no limit, announce `label` ready, and stop on SIGTERM or SIGINT. Reflection
    lets ghz find the methods without proto files."""
    server = grpc.aio.server()
    add(server)
    reflection.enable_server_reflection(
        (service, reflection.SERVICE_NAME), server,
        pool=MethodAwarePool(descriptor_pool.Default()))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = catch_stop_signals()
    announce_ready(label, bound)
    await stop.wait()
    await server.stop(1)


async def main(port: int) -> None:
    await serve_bare(lambda server: pb_grpc.add_FrontendServicer_to_server(EchoFrontend(), server),
                     "clipper.v1.Frontend", "echo", port)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    run_service(main(parser.parse_args().port))  # the same event loop as the services
