"""The HTTP connection protocol: uvicorn's httptools protocol with two changes.

* HTTP/1.0 keep-alive, which uvicorn refuses and `ab -k` needs. ab speaks only HTTP/1.0; with
  -k it sends `Connection: keep-alive` and reuses the connection only if the response says
  `keep-alive` and has a Content-Length. uvicorn closes every HTTP/1.0 connection, so without
  this every ab request pays a new TCP connection and ab's "Keep-Alive requests" reads 0.
* A graceful shutdown that does not reset a connection whose request was sent but not yet
  read: uvicorn closes every connection without a request in progress at once, and closing a
  socket with unread bytes sends a reset. Here such a connection gets ``SHUTDOWN_GRACE_S`` for
  its request to arrive; it is answered (with ``Connection: close``) and then closed.
* A header timeout, which uvicorn lacks: a client that opens a connection (or starts a
  request) and does not finish sending its headers within ``header_timeout_s`` is cut off and
  counted, so slow-header clients cannot hold connections open forever. (Slow bodies are the
  request deadline's: 504.)
"""

from __future__ import annotations

import asyncio
from typing import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SHUTDOWN_GRACE_S = 0.5


class SegserveHttpProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    on_cut_off: Callable[[], None] = staticmethod(lambda: None)
    _header_timer: asyncio.TimerHandle | None = None
    _shutting_down = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()  # a kept-alive connection's next request: its headers are timed too

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()
        if self.cycle is None:
            return
        if self._shutting_down:
            self.cycle.keep_alive = False
        elif self.parser.get_http_version() == "1.0" and self.parser.should_keep_alive():
            self.cycle.keep_alive = True

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._shutting_down = True
            self.loop.call_later(SHUTDOWN_GRACE_S, self._close_if_idle)
        else:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.on_cut_off()
            self.transport.close()


def http_protocol(header_timeout_s: float, on_cut_off: Callable[[], None]) -> type[SegserveHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, with these settings."""
    return type(
        "SegserveHttpProtocol", (SegserveHttpProtocol,), {"header_timeout_s": header_timeout_s, "on_cut_off": staticmethod(on_cut_off)}
    )


class Http10KeepAliveHeader:
    """ASGI middleware: tells an HTTP/1.0 keep-alive client whether the connection stays open.
    Only a response with a Content-Length can (HTTP/1.0 has no chunked encoding)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("http_version") != "1.0":
            await self.app(scope, receive, send)
            return
        connection = dict(scope["headers"]).get(b"connection", b"").lower()
        if b"keep-alive" not in connection:
            await self.app(scope, receive, send)
            return

        async def send_with_connection(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"connection" not in names:
                    value = b"keep-alive" if b"content-length" in names else b"close"
                    headers.append((b"connection", value))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_connection)
