"""A bare grpc.aio server that answers Predict with its input: the gRPC limit to compare with.

`python -m benchmarks.echo_server --port 0` prints the usual ready line.
"""

from __future__ import annotations

import argparse

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


async def main(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_FrontendServicer_to_server(EchoFrontend(), server)
    reflection.enable_server_reflection(  # so that ghz finds Predict without proto files
        ("clipper.v1.Frontend", reflection.SERVICE_NAME), server,
        pool=MethodAwarePool(descriptor_pool.Default()))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = catch_stop_signals()
    announce_ready("echo", bound)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    run_service(main(parser.parse_args().port))  # the same event loop as the services
