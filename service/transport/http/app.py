"""The FastAPI application: routes, error handlers and middleware; wiring only."""

from __future__ import annotations

from fastapi import FastAPI

from segserve import __version__
from segserve.config import Settings
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.transport.access import ApiKey
from segserve.transport.http import demo, errors
from segserve.transport.http.access import PROBES, ApiKeyMiddleware, docs_paths, document_api_key
from segserve.transport.http.direct import DirectRoutes
from segserve.transport.http.keepalive import Http10KeepAliveHeader
from segserve.transport.http.middleware import RequestIdMiddleware
from segserve.transport.http.routes import metrics_router, router, segment
from segserve.transport.http.v2_routes import router as v2_router
from segserve.transport.http.video_routes import router as video_router


def build_app(settings: Settings, metrics: Metrics, manager: ModelManager, lifespan) -> FastAPI:
    """The HTTP face of one server (segserve.server wires it and owns the lifespan)."""
    app = FastAPI(
        title="segserve",
        version=__version__,
        description="Dynamically batched image segmentation: semantic label maps and instance masks as COCO RLE or PNG.",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
        # On this port unless they live on the metrics port (or nowhere): settings.docs.
        **({} if settings.docs in ("key", "public") else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.manager = manager
    errors.install(app)
    app.include_router(router)
    app.include_router(video_router)
    app.include_router(v2_router)  # KServe v2 over HTTP, the twin of gRPC
    demo.install(app)  # the demo page at /
    if not settings.metrics_port:  # else the metrics port's alone (transport/http/metrics_port.py)
        app.include_router(metrics_router)
    # innermost: past the API key, the request id and the keep-alive header like every route
    app.add_middleware(DirectRoutes, routes={("POST", "/segment"): segment})
    key = ApiKey.from_settings(settings)
    if key is not None:  # added first: inside RequestIdMiddleware, so a 401 carries X-Request-ID
        # the demo page is documentation too: open with the docs (its API calls carry the key)
        open_paths = PROBES | (docs_paths(app) | demo.PAGE_PATHS if settings.docs == "public" else frozenset())
        app.add_middleware(ApiKeyMiddleware, key=key, open_paths=open_paths, metrics=metrics)
        document_api_key(app, open_paths)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(Http10KeepAliveHeader)
    return app
