"""Domain errors. Transports map them to status codes (HTTP: transport/http/errors.py);
nothing below the transport layer knows about HTTP."""

from __future__ import annotations


class ServiceError(Exception):
    code = "internal_error"
    retry_after_s: float | None = None

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


class ModelNotReady(ServiceError):
    code = "model_not_ready"
    retry_after_s = 5.0


class DeadlineExceeded(ServiceError):
    code = "deadline_exceeded"
