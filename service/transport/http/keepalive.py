"""HTTP/1.0 keep-alive, which uvicorn refuses and `ab -k` needs.

ab speaks only HTTP/1.0; with -k it sends `Connection: keep-alive` and reuses the connection
only if the response says `keep-alive` and has a Content-Length. uvicorn closes every HTTP/1.0
connection, so without this every ab request pays a new TCP connection and ab's
"Keep-Alive requests" reads 0.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class Http10KeepAliveProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, keeping HTTP/1.0 connections that ask for it open."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None and self.parser.get_http_version() == "1.0" and self.parser.should_keep_alive():
            self.cycle.keep_alive = True


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
