"""The hot routes served straight from the ASGI stack: the request-id, API-key and keep-alive
middleware still wrap them, but FastAPI's per-request layers (router matching, the endpoint
wrapper, the dependency solver, its exit stack and exception middleware) are skipped. An
overloaded server answers thousands of 503s a second on this path, and each of those layers
costs as much as the refusal itself.

The same endpoints stay declared as FastAPI routes, for /docs and for anything not matched
here (another method, a trailing slash). Each endpoint turns every error into its own
response, so FastAPI's exception handlers have nothing to do for them.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """ASGI middleware: ``(method, path)`` -> endpoint, answered without the router."""

    def __init__(self, app, routes: dict[tuple[str, str], Endpoint]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send):
        endpoint = self.routes.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)
