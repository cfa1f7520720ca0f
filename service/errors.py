"""Domain errors: the only exceptions that become a client-facing status. Transports map them
to status codes (HTTP: transport/http/errors.py, gRPC: transport/grpc/errors.py); nothing
below the transport layer knows about either. Any other exception is a bug or a failure of
the server: it is logged with its traceback and the request id and answered as
``InternalError`` (HTTP 500, gRPC INTERNAL) -- never as the client's fault."""

from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


class ServiceError(Exception):
    code = "internal_error"
    retry_after_s: float | None = None
    # The server's side of the story (overload, not ready, deadlines, failures): logged
    # where it is answered. The others are the client's and are only counted.
    server_side = False

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class BadParameter(ServiceError):
    code = "bad_parameter"


class SequenceConflict(ServiceError):
    """A video chunk's ``sequence`` is not the one its stream expects (repeated or out of order)."""

    code = "sequence_conflict"


class Unauthorized(ServiceError):
    """No API key, or the wrong one, on a server that requires one (transport/access.py)."""

    code = "unauthorized"


class ModelNotFound(ServiceError):
    code = "model_not_found"


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class UndecodableInput(ServiceError):
    code = "undecodable_input"


class TooManyPixels(ServiceError):
    code = "too_many_pixels"


class QueueFull(ServiceError):
    code = "queue_full"
    retry_after_s = 1.0
    server_side = True


class ModelNotReady(ServiceError):
    code = "model_not_ready"
    retry_after_s = 5.0
    server_side = True


class DeadlineExceeded(ServiceError):
    code = "deadline_exceeded"
    server_side = True


class InternalError(ServiceError):
    """Anything that is not a domain error, after it was logged with its traceback."""

    code = "internal_error"
    server_side = True


def status_in(table: Mapping[type[ServiceError], T], exc: ServiceError, default: T) -> T:
    """A transport's status for ``exc``: that of its nearest class in ``table``."""
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default
