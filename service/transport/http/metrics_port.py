"""The metrics port (settings.metrics_port): a second, tiny plain-HTTP server in the same
process and event loop that serves /metrics (and, with settings.docs="metrics_port", the
docs), without key or TLS, as Triton's :8002 does. Bind it where only the scraper reaches
(settings.metrics_host). Anything else there is a 404.

It runs on uvicorn's Server without its signal handling (the main server owns SIGTERM and
SIGINT), on a socket bound here, so a port already taken fails the app's start-up with
the OSError rather than exiting the process from inside a task."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from segserve.config import Settings
from segserve.metrics import Metrics

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5


def build_metrics_app(settings: Settings, metrics: Metrics, main_app: FastAPI) -> Starlette:
    async def scrape(request: Request) -> Response:
        # rendered off the event loop: a scrape must not hold up requests
        body = await asyncio.to_thread(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/metrics", scrape, methods=["GET"])]
    if settings.docs == "metrics_port":
        title = main_app.title

        async def openapi(request: Request) -> JSONResponse:
            return JSONResponse(main_app.openapi())

        async def docs(request: Request) -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{title} - Swagger UI")

        async def redoc(request: Request) -> HTMLResponse:
            return get_redoc_html(openapi_url="/openapi.json", title=f"{title} - ReDoc")

        routes += [Route("/openapi.json", openapi, methods=["GET"]), Route("/docs", docs, methods=["GET"]),
                   Route("/redoc", redoc, methods=["GET"])]
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    """uvicorn.Server.serve less its signal handlers (the main server's) and its "server
    process" log lines (there is one process, whose start the main server logs)."""

    async def serve_socket(self, sock: socket.socket) -> None:
        config = self.config
        if not config.loaded:
            config.load()
        self.lifespan = config.lifespan_class(config)
        await self.startup(sockets=[sock])
        if not self.should_exit:
            await self.main_loop()
        if self.started:
            await self.shutdown(sockets=[sock])


class MetricsServer:
    def __init__(self, settings: Settings, app: Starlette):
        self.host = settings.metrics_host or settings.host
        self.port = settings.metrics_port
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=STOP_TIMEOUT_S)
        self._server = _Server(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family)  # OSError when taken: start-up fails
        self._task = asyncio.create_task(self._server.serve_socket(sock), name="segserve-metrics-port")
        while not self._server.started:
            if self._task.done():  # failed before it served
                await self._task
                raise RuntimeError("metrics server stopped before it started")
            await asyncio.sleep(0.01)
        log.info("metrics on http://%s:%d/metrics (plain HTTP, no key)", self.host, self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None
