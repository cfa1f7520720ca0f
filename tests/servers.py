"""The ways the tests run segserve.

``InProcessServer``: the real app (``segserve.server.create_app``) with its lifespan (model
repository loaded, real ONNX Runtime / torch engines, batchers, video service) running on an
event loop in a thread of the test process, spoken to through ``httpx.ASGITransport``. No
socket, no fakes; starting one costs the model loads, not a Python + torch start-up. Most API
tests use it.

``ServerProcess``: ``python -m segserve serve`` in a subprocess on a free loopback port, for
what needs a real process: uvicorn and its HTTP/1.0 keep-alive protocol (ab), real sockets
(clients that hang up), SIGTERM, gRPC spoken to by tritonclient (its generated protobuf
messages cannot share a process with segserve's, see segserve/server.py), the load harness.

Both offer ``client`` (an ``httpx.Client`` on the server) and ``log()``.

``SEGSERVE_TEST_WORKERS=N`` (N > 1; `make test-workers`) runs the API tests against the other
process topology, ``segserve serve --workers N`` (one engine process, N uvicorn workers):
``app_server`` then starts a ``WorkersServer`` -- a real process on a real socket with
``InProcessServer``'s interface (``client``, ``run``, ``async_client``, ``transport``, ``log``) --
and ``ServerProcess`` passes ``--workers N`` too. Tests that look inside the test process' app are
marked ``single_process`` (tests/conftest.py skips them in that mode).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx

from segserve.config import Settings
from segserve.server import create_app
from segserve_loadtest.server import SegserveProcess, ServerError, free_port  # noqa: F401 (ServerError: for the tests)

BASE_URL = "http://segserve"
REQUEST_TIMEOUT_S = 120.0
START_TIMEOUT_S = 180.0
# The HTTP worker processes every server of the API tests runs with; 1: today's single process.
WORKERS = int(os.environ.get("SEGSERVE_TEST_WORKERS") or 1)


# A line logged at ERROR or above: "LEVEL name: ..." (InProcessServer), "<asctime> LEVEL ..."
# (a process' log file), or uvicorn's own "LEVEL:" lines there.
_ERROR_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\d \S+ )?(?:ERROR|CRITICAL)\b")


def logged_errors(log: str) -> list[str]:
    """The lines of a server's ``log()`` written at ERROR or CRITICAL, in either server's format."""
    return [line for line in log.splitlines() if _ERROR_LINE.match(line)]


class _Bursts:
    """``run``, for both kinds of server: what differs is ``async_client``."""

    def async_client(self) -> httpx.AsyncClient:
        raise NotImplementedError

    def run(self, fn: Callable[[httpx.AsyncClient], Awaitable], timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
        """``fn(async_client)`` on a loop of its own: for bursts of concurrent requests."""

        async def main():
            async with self.async_client() as client:
                return await fn(client)

        return asyncio.run(asyncio.wait_for(main(), timeout_s))


class _OnAppLoop(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """``httpx.ASGITransport`` run on the app's event loop, for a sync ``httpx.Client`` in any
    thread or an ``httpx.AsyncClient`` on any other loop: requests from several threads or
    tasks reach the app concurrently, as they would over several connections."""

    def __init__(self, server: "InProcessServer"):
        self._server = server
        self._asgi = httpx.ASGITransport(app=server.app)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        response = await self._asgi.handle_async_request(request)
        body = await response.aread()
        # A stream, not content=: httpx would add a Content-Length the app did not send.
        return httpx.Response(response.status_code, headers=response.headers, stream=httpx.ByteStream(body),
                              extensions=response.extensions)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body in memory: readable from the app's loop
        return self._server.call(self._handle(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        future = asyncio.run_coroutine_threadsafe(self._handle(request), self._server.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), REQUEST_TIMEOUT_S)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class InProcessServer(_Bursts):
    """``with InProcessServer(repo, max_body_bytes=...) as server: server.client.post("/segment", ...)``

    Keyword arguments are ``Settings`` fields (what SEGSERVE_* variables set for a process).
    gRPC stays off: see the module docstring.
    """

    def __init__(self, model_repository: Path, **settings: Any):
        self.settings = Settings(model_repository=Path(model_repository), **{"grpc_port": None, **settings})
        if self.settings.grpc_port:
            raise ValueError("gRPC cannot run in the test process (tritonclient's protobuf messages); use ServerProcess")
        self.app = create_app(self.settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="segserve-app-loop", daemon=True)
        self._lifespan = None
        self._records = _Records()
        self.client: httpx.Client | None = None

    def call(self, work: Awaitable, timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
        """Run a coroutine on the app's loop and return its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout_s)

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=_OnAppLoop(self), base_url=BASE_URL)

    def transport(self) -> httpx.BaseTransport | httpx.AsyncBaseTransport:
        """An httpx transport (sync and async) to this app, for other clients (segserve.client)."""
        return _OnAppLoop(self)

    def start(self) -> "InProcessServer":
        logging.getLogger("segserve").addHandler(self._records)
        self._thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        try:
            self.call(self._lifespan.__aenter__(), START_TIMEOUT_S)
        except BaseException:
            self._lifespan = None
            self.stop()
            raise
        self.client = httpx.Client(transport=_OnAppLoop(self), base_url=BASE_URL)
        return self

    def stop(self) -> None:
        """The lifespan's shutdown (batchers drain), then the loop and its thread end."""
        try:
            if self.client is not None:
                self.client.close()
            if self._lifespan is not None:
                lifespan, self._lifespan = self._lifespan, None
                self.call(lifespan.__aexit__(None, None, None), START_TIMEOUT_S)
        finally:
            if self._thread.is_alive():
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(30)
            if not self._thread.is_alive() and not self.loop.is_closed():
                self.loop.close()
            logging.getLogger("segserve").removeHandler(self._records)

    def log(self) -> str:
        """What segserve logged (at the levels its loggers pass) while this server ran."""
        return "\n".join(self._records.lines)

    def __enter__(self) -> "InProcessServer":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


class ServerProcess(SegserveProcess):
    """``with ServerProcess(repo, tmp_path / "server.log") as server: server.client.get(...)``

    The load harness's ``SegserveProcess`` (segserve_loadtest.server) with what the tests add:
    ``client``, an ``httpx.Client`` on the server; ``grpc=True`` serves KServe v2 gRPC on a free
    port too (``grpc_url``; off otherwise); ``tls_ca``: the server speaks TLS (its --tls-* flags
    are in ``args``) with a certificate that this CA file verifies, ``url`` is then https and
    ``client`` verifies with ``ssl_context``. ``args`` are extra `segserve serve` flags, ``env``
    extra environment (SEGSERVE_* settings).
    """

    def __init__(self, model_repository: Path, log_path: Path, *, args: list[str] | None = None,
                 env: dict[str, str] | None = None, grpc: bool = False, tls_ca: Path | None = None):
        grpc_port = free_port() if grpc else 0
        if WORKERS > 1:  # an environment variable: a test's own --workers flag still wins
            env = {"SEGSERVE_WORKERS": str(WORKERS), **(env or {})}
        super().__init__(model_repository, log_path, args=["--grpc-port", str(grpc_port), *(args or [])], env=env,
                         ready_timeout_s=START_TIMEOUT_S)
        self.grpc_url = f"127.0.0.1:{grpc_port}" if grpc else None
        if tls_ca is not None:
            self.url = f"https://127.0.0.1:{self.port}"
            self.ssl_context = self.verify = ssl.create_default_context(cafile=str(tls_ca))
        else:
            self.ssl_context = None
        self.client: httpx.Client | None = None

    def start(self, ready_path: str = "/readyz") -> "ServerProcess":
        """Start, and wait until ``ready_path`` answers 200 (``/healthz``: not waiting for models)."""
        self.client = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S, verify=self.verify)
        super().start(ready_path)
        return self

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM (the server drains), SIGKILL after ``grace_s``; returns the exit code."""
        if self.client is not None:
            self.client.close()
        return super().stop(grace_s)


class _ToServer(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Real HTTP to a server process, for requests addressed to ``BASE_URL`` as the in-process
    transport takes them (clients built on ``transport()``, absolute URLs)."""

    def __init__(self, url: str):
        self._url = httpx.URL(url)
        self._sync = httpx.HTTPTransport()
        # Bursts of concurrent requests each get a connection, as they do in process.
        self._async = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))

    def _to_server(self, request: httpx.Request) -> httpx.Request:
        if request.url.host == httpx.URL(BASE_URL).host:
            request.url = request.url.copy_with(scheme=self._url.scheme, host=self._url.host, port=self._url.port)
        return request

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._sync.handle_request(self._to_server(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._async.handle_async_request(self._to_server(request))

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        await self._async.aclose()


def settings_env(settings: dict[str, Any]) -> dict[str, str]:
    """``Settings`` fields as the SEGSERVE_* variables that set them (lists as JSON, as
    pydantic-settings reads them)."""
    return {f"SEGSERVE_{name.upper()}": value if isinstance(value, str) else str(value) if isinstance(value, Path)
            else json.dumps(value) for name, value in settings.items()}


class WorkersServer(_Bursts, ServerProcess):
    """``InProcessServer``'s interface on a real ``segserve serve --workers WORKERS`` process:
    the same keyword settings (as SEGSERVE_* variables), ``client`` and ``transport()`` over
    real HTTP (requests to ``BASE_URL`` reach it too), ``log()`` from its log file."""

    def __init__(self, model_repository: Path, **settings: Any):
        if settings.get("grpc_port"):
            raise ValueError("gRPC on a free port: use ServerProcess(grpc=True)")
        settings.pop("grpc_port", None)
        self.settings = Settings(model_repository=Path(model_repository), **settings)  # what the process reads
        log_path = Path(tempfile.mkdtemp(prefix="segserve-test-")) / "server.log"
        super().__init__(model_repository, log_path, args=["--workers", str(WORKERS)], env=settings_env(settings))

    def start(self, ready_path: str = "/healthz") -> "WorkersServer":
        # As InProcessServer's start, returns once the models have loaded or failed (a worker
        # starts after the engine process' models): a test of a model that fails to load
        # asks /readyz itself.
        super().start(ready_path)
        self.client.close()
        self.client = httpx.Client(base_url=self.url, transport=self.transport(), timeout=REQUEST_TIMEOUT_S)
        return self

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, transport=self.transport(), timeout=REQUEST_TIMEOUT_S)

    def transport(self) -> _ToServer:
        return _ToServer(self.url)


def app_server(model_repository: Path, **settings: Any) -> InProcessServer | WorkersServer:
    """The server of an API test: ``InProcessServer``, or with ``SEGSERVE_TEST_WORKERS=N`` a
    ``WorkersServer`` with the same settings."""
    return (WorkersServer if WORKERS > 1 else InProcessServer)(model_repository, **settings)
