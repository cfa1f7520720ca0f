"""uvicorn's server, with readiness going false before it stops.

On SIGTERM (or SIGINT) the server first answers /readyz with 503 and logs what is in flight;
after ``shutdown_delay_s`` (time for a load balancer to notice; 0 by default) uvicorn's graceful
shutdown begins: no new connections, in-flight requests answered (up to shutdown_drain_s),
then the app's lifespan drains the batchers and stops gRPC. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI

from segserve.config import Settings
from segserve.model_manager import ModelManager
from segserve.transport.http.keepalive import http_protocol

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, manager: ModelManager, delay_s: float):
        super().__init__(config)
        self._manager = manager
        self._delay_s = delay_s
        self._draining = False

    def handle_exit(self, sig: int, frame) -> None:
        first = not self._draining
        if first:
            self._begin_drain(sig)
        if first and self._delay_s:
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(loop.call_later, self._delay_s, self._stop_after_delay, sig, frame)
        else:
            super().handle_exit(sig, frame)  # uvicorn's: graceful the first time, forced the second

    def _stop_after_delay(self, sig: int, frame) -> None:
        if not self.should_exit:  # unless a second signal already started the stop
            super().handle_exit(sig, frame)

    def _begin_drain(self, sig: int) -> None:
        self._draining = True
        self._manager.ready = False
        in_flight = self._manager.in_flight()
        log.info(
            "signal %d: readiness off; %d requests in flight (%s); stopping%s",
            sig, sum(in_flight.values()), ", ".join(f"{k}: {v}" for k, v in in_flight.items() if v) or "none",
            f" in {self._delay_s:g} s" if self._delay_s else "",
        )


def uvicorn_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    """How uvicorn serves ``app``: one process's, or each worker's of ``--workers N``."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        http=http_protocol(settings.header_timeout_s, app.state.metrics.slow_clients.inc),
        access_log=False,
        timeout_keep_alive=30,
        # beyond this many open connections (or requests), new requests get an immediate 503
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) or None,
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
    )
