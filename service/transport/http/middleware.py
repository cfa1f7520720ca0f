"""Pure-ASGI request id middleware (no per-request task or body buffering, unlike BaseHTTPMiddleware).

It is also where an exception no route turned into a response ends: logged once, with its
traceback and the request id, and answered as a JSON 500 that carries the X-Request-ID
header -- Starlette's own last-resort handler sits outside this middleware and would have
neither."""

from __future__ import annotations

import json
import logging

from segserve.errors import InternalError
from segserve.logs import request_id_from, request_id_var

log = logging.getLogger(__name__)


class RequestIdMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1"))
        token = request_id_var.set(request_id)
        header = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # the status line is out: all that is left is to close the connection
                raise
            error = InternalError(f"internal error; see the server log for request id {request_id}")
            body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
            await send({
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), header],
            })
            await send({"type": "http.response.body", "body": body})
        finally:
            request_id_var.reset(token)
