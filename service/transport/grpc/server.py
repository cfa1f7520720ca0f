"""The gRPC server's life: started and stopped by the HTTP app's lifespan, on the same event
loop, so one process serves both protocols from one set of models and batchers."""

from __future__ import annotations

import logging

import grpc

from segserve.config import Settings
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.transport.grpc.inference_pb2_grpc import (
    add_GRPCInferenceServiceServicer_to_server,
)
from segserve.transport.grpc.servicer import InferenceServicer

log = logging.getLogger(__name__)

# Room for the protobuf envelope around the image bytes (tensor metadata, parameters,
# length prefixes), so an image of exactly max_body_bytes is still accepted as over HTTP.
ENVELOPE_BYTES = 64 * 1024


async def start_grpc_server(settings: Settings, manager: ModelManager, metrics: Metrics) -> grpc.aio.Server:
    # Larger messages are refused by gRPC itself with RESOURCE_EXHAUSTED, before any decoding.
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes + ENVELOPE_BYTES),
            # gRPC's default SO_REUSEPORT would let two servers share the port silently.
            ("grpc.so_reuseport", 0),
        ]
    )
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(manager, metrics), server)
    address = f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)  # raises when the port cannot be bound: startup fails, as for HTTP
    await server.start()
    log.info("gRPC (KServe v2) listening on %s", address)
    return server
