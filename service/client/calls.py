"""What both clients send and how they read the answers, without the I/O: the sync ``Client``
and the ``AsyncClient`` differ only in how they wait (segserve.client.sync / .aio)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx

from segserve import __version__
from segserve.client.errors import SegserveError
from segserve.client.images import Payload
from segserve.client.retry import RETRIED_STATUSES, RetryPolicy, remaining_ms

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = f"segserve-client/{__version__}"
# The client's own wait for an answer beyond the request's deadline: the server answers a
# 504 at the deadline, so the socket should not give up first.
SLACK_S = 5.0
CONNECTION_LOST = "connection_lost"  # a streamed answer cut off after it began
# What cuts a streamed answer off once it began (a read timeout too: the server stopped sending).
STREAM_ERRORS = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout)


@dataclass
class Call:
    """One HTTP request, re-sent as it is on a retry but for the deadline left (``timeout_ms``)."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: list | None = None
    deadline: float | None = None  # time.monotonic()

    def request_kwargs(self, default_timeout_s: float) -> dict[str, Any]:
        params = {k: v for k, v in self.params.items() if v is not None}
        left = remaining_ms(self.deadline)
        if left is not None:
            params["timeout_ms"] = left
        timeout = default_timeout_s if left is None else left / 1000 + SLACK_S
        kwargs: dict[str, Any] = {"params": params, "headers": self.headers, "timeout": timeout}
        if self.content is not None:
            kwargs["content"] = self.content
        if self.files is not None:
            kwargs["files"] = self.files
        return kwargs


def deadline_of(timeout_ms: int | None) -> float | None:
    return None if timeout_ms is None else time.monotonic() + timeout_ms / 1000


def image_call(payload: Payload, model: str | None, fmt: str, options: Mapping[str, Any], timeout_ms: int | None) -> Call:
    return Call("POST", "/segment", {"model": model, "format": fmt, **options},
                {"Content-Type": payload.content_type}, content=payload.data, deadline=deadline_of(timeout_ms))


def headers_of(api_key: str | None) -> dict[str, str]:
    return {"User-Agent": USER_AGENT, **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


def retry_wait(policy: RetryPolicy, attempt: int, call: Call, response: httpx.Response | None) -> float | None:
    """After try ``attempt``: seconds to wait before sending ``call`` again, or None (answer it)."""
    if response is not None and response.status_code not in RETRIED_STATUSES:
        return None
    return policy.wait_s(attempt, call.deadline, response.headers.get("retry-after") if response is not None else None)


def checked(response: httpx.Response) -> httpx.Response:
    """The response if it is a 2xx, else its error raised."""
    if response.is_success:
        return response
    raise SegserveError.from_response(response.status_code, response.headers, response.content)


def connection_error(call: Call, exc: Exception, attempts: int) -> SegserveError:
    return SegserveError(None, "connection_error", f"{call.method} {call.path}: {type(exc).__name__}: {exc} "
                                                   f"(after {attempts} tries)")


def connection_lost(call: Call, exc: Exception) -> SegserveError:
    return SegserveError(None, CONNECTION_LOST, f"{call.method} {call.path}: the answer was cut off: {type(exc).__name__}: {exc}",
                         midway=True)
