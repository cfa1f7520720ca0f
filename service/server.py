"""The composition root: one place that builds the models, the HTTP app and the gRPC server,
starts them in order (models, then gRPC; HTTP serves once the app's lifespan has started)
and stops them in reverse (gRPC finishes its RPCs, then the models drain their batchers)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from segserve.config import Settings
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.transport.http.app import build_app

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    manager = ModelManager(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await manager.start()
        grpc_server = None
        if settings.grpc_port:
            # Imported only when used: its `inference.*` protobuf messages cannot share a process
            # with tritonclient.grpc's identically named ones (duplicate descriptor symbols).
            from segserve.transport.grpc.server import start_grpc_server

            grpc_server = await start_grpc_server(settings, manager, metrics)
        try:
            yield
        finally:
            if grpc_server is not None:  # in-flight RPCs finish before the batchers drain
                log.info("stopping gRPC: in-flight RPCs get up to %g s", settings.shutdown_drain_s)
                await grpc_server.stop(settings.shutdown_drain_s)
            await manager.stop()

    return build_app(settings, metrics, manager, lifespan)
