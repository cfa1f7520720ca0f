"""The composition root: one place that builds the models, the HTTP app and the gRPC server,
starts them in order (models, then gRPC; HTTP serves once the app's lifespan has started)
and stops them in reverse (gRPC finishes its RPCs, then the models drain their batchers).
A metrics port (settings.metrics_port) opens before all of them and closes after, so model
loading and the drain can be watched.

With ``--workers N`` (segserve.supervisor) the engine process runs this app's lifespan (models,
gRPC, metrics port) without serving its HTTP routes, and each worker serves them from an app
whose batchers are the engine process's (``batchers``) and which starts neither gRPC nor the
metrics port (``engine_side=False``)."""

from __future__ import annotations

import gc
import ipaddress
import logging
from contextlib import asynccontextmanager
from typing import Awaitable, Callable

from fastapi import FastAPI

from segserve.config import Settings
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.scheduler import BatcherFactory
from segserve.transport.http.app import build_app
from segserve.transport.http.metrics_port import MetricsServer, build_metrics_app

log = logging.getLogger("segserve.server")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def log_access(settings: Settings) -> None:
    """One line saying what is exposed, and a warning where a key would cross the network in clear."""
    key = "API key required" if settings.api_key is not None else "no API key (open)"
    metrics = f"/metrics on :{settings.metrics_port}" if settings.metrics_port else "/metrics on the main port"
    log.info("access: %s, %s, %s, docs: %s", key, "TLS" if settings.tls else "plain text", metrics, settings.docs)
    if settings.api_key is not None and not settings.tls and not _loopback(settings.host):
        log.warning("the API key travels in clear text on %s: set tls_cert_file/tls_key_file or terminate TLS in front",
                    settings.host)


def inside(lifespan, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]):
    """``lifespan`` inside another service's life, started before it and stopped after (the
    metrics port: a port already taken fails start-up before any model loads)."""

    @asynccontextmanager
    async def lifespan_inside(app: FastAPI):
        await start()
        try:
            async with lifespan(app):
                yield
        finally:
            await stop()

    return lifespan_inside


def create_app(settings: Settings | None = None, batchers: BatcherFactory | None = None, engine_side: bool = True) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    manager = ModelManager(settings, metrics, batchers)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log_access(settings)
        await manager.start()
        freeze_startup_objects()
        grpc_server = None
        if settings.grpc_port and engine_side:
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

    app = build_app(settings, metrics, manager, lifespan)
    if settings.metrics_port and engine_side:  # its docs (settings.docs) are the app's: built once the app is
        metrics_server = MetricsServer(settings, build_metrics_app(settings, metrics, app))
        app.router.lifespan_context = inside(app.router.lifespan_context, metrics_server.start, metrics_server.stop)
    return app


def freeze_startup_objects() -> None:
    """Move everything loaded by now (torch, onnxruntime, the models, FastAPI's routes: ~400k
    objects) out of the cyclic garbage collector's sight, for the life of the process. They
    would otherwise be walked by every full collection, hundreds of milliseconds holding the
    GIL each time one falls due under load; the young objects of requests are collected as
    before. (Instagram's gc.freeze(), done once the server is up rather than before forking.)"""
    gc.collect()
    gc.freeze()
