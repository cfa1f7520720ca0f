"""The gRPC server's life: started and stopped by the HTTP app's lifespan, on the same event
loop, so one process serves both protocols from one set of models and batchers."""

from __future__ import annotations

import logging

import grpc

from segserve.config import Settings
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.transport.access import ApiKey
from segserve.transport.grpc.access import ApiKeyInterceptor
from segserve.transport.grpc.inference_pb2_grpc import (
    add_GRPCInferenceServiceServicer_to_server,
)
from segserve.transport.grpc.servicer import InferenceServicer
from segserve.transport.kserve import ENVELOPE_BYTES

log = logging.getLogger(__name__)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from settings.tls_cert_file / tls_key_file (the PEM files HTTP serves), else None."""
    if not settings.tls:
        return None
    return grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())])


async def start_grpc_server(settings: Settings, manager: ModelManager, metrics: Metrics) -> grpc.aio.Server:
    key = ApiKey.from_settings(settings)
    # Larger messages are refused by gRPC itself with RESOURCE_EXHAUSTED, before any decoding.
    server = grpc.aio.server(
        interceptors=[ApiKeyInterceptor(key, metrics)] if key is not None else None,
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes + ENVELOPE_BYTES),
            # gRPC's default SO_REUSEPORT would let two servers share the port silently.
            ("grpc.so_reuseport", 0),
        ]
    )
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(manager, metrics), server)
    address = f"{settings.host}:{settings.grpc_port}"
    # Both raise when the port cannot be bound: startup fails, as for HTTP.
    credentials = server_credentials(settings)
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    await server.start()
    log.info("gRPC (KServe v2) listening on %s (%s, %s)", address, "TLS" if credentials else "plain text",
             "API key required" if key is not None else "no API key")
    return server
