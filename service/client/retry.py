"""When to send a request again: on 503 (overload, a model loading), waiting what its
``Retry-After`` says, and on connection failures, with exponential backoff; never on any other
answer (a 4xx is the caller's to fix, a 500 or 504 would fail the same way again). Every wait
stays inside the call's deadline. Pure decisions: the sync and async clients do the waiting."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import httpx

RETRIED_STATUSES = frozenset({503})
# The request may not have reached the server, or its answer was lost: safe to send again
# (a repeated video chunk is recognised by its sequence). A read timeout is not retried: the
# server has the request and is busy with it; sending it again would only add load.
RETRIED_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                  httpx.RemoteProtocolError, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included (1: never retry)
    backoff_s: float = 0.25  # the first wait after a connection error (or a 503 without Retry-After), doubled each time
    max_wait_s: float = 30.0  # the longest single wait, Retry-After included
    jitter: float = 0.1  # +- this share of each wait, so that refused clients do not come back in step

    def wait_s(self, attempt: int, deadline: float | None, retry_after: str | None = None) -> float | None:
        """Seconds to wait before try ``attempt + 1`` after try ``attempt`` failed in a way that
        may be retried, or None to give up: tries spent, or the deadline (time.monotonic) would
        pass while waiting."""
        if attempt >= self.attempts:
            return None
        wait = parse_retry_after(retry_after)
        if wait is None:
            wait = self.backoff_s * 2 ** (attempt - 1)
        wait = min(wait, self.max_wait_s) * (1 + random.uniform(-self.jitter, self.jitter))
        if deadline is not None and time.monotonic() + wait >= deadline:
            return None
        return max(0.0, wait)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (segserve sends whole seconds; an HTTP date is not used by it)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def remaining_ms(deadline: float | None) -> int | None:
    """What is left of the call's deadline, as the server's ``timeout_ms`` (at least 1)."""
    return None if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
