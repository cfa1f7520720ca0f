"""Domain errors -> gRPC status codes: the gRPC twin of transport/http/errors.py."""

from __future__ import annotations

import grpc

from segserve import errors

STATUS = {
    errors.BadParameter: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UndecodableInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooManyPixels: grpc.StatusCode.INVALID_ARGUMENT,
    errors.QueueFull: grpc.StatusCode.UNAVAILABLE,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.SequenceConflict: grpc.StatusCode.ABORTED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}


def status_of(exc: errors.ServiceError) -> grpc.StatusCode:
    return errors.status_in(STATUS, exc, grpc.StatusCode.INTERNAL)


def details_of(exc: errors.ServiceError) -> str:
    """The status message: the domain code first, as HTTP's error body carries it."""
    return f"{exc.code}: {exc.message}"
