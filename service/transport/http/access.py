"""The API key on HTTP: a pure-ASGI middleware (no per-request task or body buffering) that
refuses a request without the key before the route runs and before its body is read, so an
unauthenticated upload costs its headers only (with `Expect: 100-continue` the client sends
no body at all). It sits inside RequestIdMiddleware: every 401 carries X-Request-ID.

Open without the key: the probes (/healthz, /readyz, /v2/health/live, /v2/health/ready), and
the docs when settings.docs is "public". Everything else, unknown paths included, needs it: a
missing route answers 401, not 404, to a client without the key. Under /v2 the 401 body is
KServe v2's {"error": "..."}."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from segserve.errors import Unauthorized
from segserve.metrics import Metrics
from segserve.transport.access import CHALLENGE, CHALLENGE_INVALID, ApiKey, InvalidKey
from segserve.transport.http.errors import error_response, is_v2, status_of, v2_error_response

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "`X-API-Key: <key>`"},
}


def docs_paths(app: FastAPI) -> frozenset[str]:
    urls = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url if app.docs_url else None)
    return frozenset(url for url in urls if url)


class ApiKeyMiddleware:
    def __init__(self, app, key: ApiKey, open_paths: frozenset[str], metrics: Metrics):
        self.app = app
        self.key = key
        self.open_paths = open_paths
        self._refused = metrics.unauthorized.labels("http")

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        try:
            self.key.check(scope["headers"])
        except Unauthorized as exc:
            self._refused.inc()
            log.debug("refused %s %r: %s", scope.get("method", "WEBSOCKET"), scope["path"], exc.message)
            if scope["type"] == "websocket":  # before accept: the server answers 403
                await send({"type": "websocket.close", "code": 1008})
                return
            challenge = CHALLENGE_INVALID if isinstance(exc, InvalidKey) else CHALLENGE
            respond = v2_error_response if is_v2(scope["path"]) else error_response
            response = respond(status_of(exc), exc.code, exc.message, headers={"WWW-Authenticate": challenge})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def document_api_key(app: FastAPI, open_paths: frozenset[str]) -> None:
    """The OpenAPI says what the middleware does: both header forms as security schemes (the
    docs' "Authorize" button), required on every operation but the open ones, each of which
    may then answer 401."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(SCHEMES)
        error = {"$ref": "#/components/schemas/ErrorResponse"} if "ErrorResponse" in components.get("schemas", {}) else {}
        for path, operations in schema.get("paths", {}).items():
            if path in open_paths:
                continue
            for operation in operations.values():
                operation["security"] = [{name: []} for name in SCHEMES]
                operation.setdefault("responses", {})["401"] = {
                    "description": "Missing or invalid API key",
                    **({"content": {"application/json": {"schema": error}}} if error else {}),
                }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
