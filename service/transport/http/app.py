"""The FastAPI application: routes, error handlers and middleware; wiring only."""

from __future__ import annotations

from fastapi import FastAPI

from segserve import __version__
from segserve.config import Settings
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.transport.http import errors
from segserve.transport.http.keepalive import Http10KeepAliveHeader
from segserve.transport.http.middleware import RequestIdMiddleware
from segserve.transport.http.routes import router
from segserve.transport.http.video_routes import router as video_router


def build_app(settings: Settings, metrics: Metrics, manager: ModelManager, lifespan) -> FastAPI:
    """The HTTP face of one server (segserve.server wires it and owns the lifespan)."""
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
