"""Every error leaves as JSON {"error": {"code", "message"}} with the right status."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from segserve import errors

log = logging.getLogger(__name__)

STATUS = {
    errors.BadParameter: 400,
    errors.ModelNotFound: 404,
    errors.SequenceConflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.UndecodableInput: 422,
    errors.TooManyPixels: 422,
    errors.QueueFull: 503,
    errors.ModelNotReady: 503,
    errors.DeadlineExceeded: 504,
}


def status_of(exc: errors.ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, code: str, message: str, retry_after_s: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def service_error_response(exc: errors.ServiceError) -> JSONResponse:
    status = status_of(exc)
    if status >= 500:  # overload, not-ready, deadlines: worth a line in the server log; 4xx are the client's
        log.warning("%s: %s", exc.code, exc.message)
    return error_response(status, exc.code, exc.message, exc.retry_after_s)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def _service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(400, errors.BadParameter.code, problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log for this request id")
