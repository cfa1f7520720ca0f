"""The FastAPI application: wiring only."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.config import Settings
from service.metrics import Metrics
from service.model_manager import ModelManager
from service.transport.http import errors
from service.transport.http.keepalive import Http10KeepAliveHeader
from service.transport.http.middleware import RequestIdMiddleware
from service.transport.http.routes import router
from service.transport.http.video_routes import router as video_router


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
            from service.transport.grpc.server import start_grpc_server

            grpc_server = await start_grpc_server(settings, manager, metrics)
        try:
            yield
        finally:
            if grpc_server is not None:  # in-flight RPCs finish before the batchers drain
                await grpc_server.stop(settings.shutdown_drain_s)
            await manager.stop()

    app = FastAPI(
        title="segserve",
        version=__version__,
        description="Dynamically batched image segmentation: semantic label maps and instance masks as COCO RLE or PNG.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.manager = manager
    errors.install(app)
    app.include_router(router)
    app.include_router(video_router)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(Http10KeepAliveHeader)
    return app
