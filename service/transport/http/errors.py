"""Every error leaves as JSON {"error": {"code", "message"}} with the right status -- except on
the KServe v2 routes (/v2/...), whose spec fixes the body as {"error": "<message>"}, the
message starting with the same code ("undecodable_input: ..."), with gRPC's mapping to
statuses (V2_STATUS: what gRPC calls INVALID_ARGUMENT is 400 there)."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from segserve import errors

STATUS = {
    errors.BadParameter: 400,
    errors.Unauthorized: 401,
    errors.ModelNotFound: 404,
    errors.SequenceConflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.UndecodableInput: 422,
    errors.TooManyPixels: 422,
    errors.QueueFull: 503,
    errors.ModelNotReady: 503,
    errors.DeadlineExceeded: 504,
    errors.InternalError: 500,
}


# The KServe v2 routes: the statuses the Open Inference Protocol (and Triton) give gRPC's codes.
V2_STATUS = {
    **STATUS,
    errors.UnsupportedMediaType: 400,
    errors.UndecodableInput: 400,
    errors.TooManyPixels: 400,
}
V2_PREFIX = "/v2"


def status_of(exc: errors.ServiceError) -> int:
    return errors.status_in(STATUS, exc, 500)


def retry_headers(retry_after_s: float | None, headers: dict[str, str] | None = None) -> dict[str, str]:
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return headers


def error_response(
    status: int, code: str, message: str, retry_after_s: float | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = retry_headers(retry_after_s, headers)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers or None)


def v2_error_response(
    status: int, code: str, message: str, retry_after_s: float | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The KServe v2 REST error body: {"error": "<code>: <message>"} (tritonclient.http reads it)."""
    headers = retry_headers(retry_after_s, headers)
    return JSONResponse({"error": f"{code}: {message}"}, status_code=status, headers=headers or None)


def v2_service_error_response(exc: errors.ServiceError) -> JSONResponse:
    return v2_error_response(errors.status_in(V2_STATUS, exc, 500), exc.code, exc.message, exc.retry_after_s)


def is_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def service_error_response(exc: errors.ServiceError) -> JSONResponse:
    """The error as it leaves (logging is the request's Observation's job)."""
    return error_response(status_of(exc), exc.code, exc.message, exc.retry_after_s)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def _service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        return v2_service_error_response(exc) if is_v2(request.url.path) else service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        respond = v2_error_response if is_v2(request.url.path) else error_response
        return respond(400, errors.BadParameter.code, problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        respond = v2_error_response if is_v2(request.url.path) else error_response
        return respond(exc.status_code, code, str(exc.detail), headers=exc.headers)  # 405 keeps its Allow
