"""One request as every transport observes it: its request id, its deadline, how its errors
are classified and logged, and the two metrics it leaves (count by status, latency).
HTTP ``/segment``, ``/segment/video`` and gRPC ``ModelInfer`` all go through ``Observation``;
each transport only maps the resulting ``ServiceError`` to its own status codes."""

from __future__ import annotations

import logging
import time

from segserve.errors import InternalError, QueueFull, ServiceError
from segserve.logs import request_id_var
from segserve.metrics import Metrics
from segserve.scheduler.clock import Clock, MonotonicClock

log = logging.getLogger(__name__)

# Overload is answered with 503s by the thousand: a line per refusal would cost the event loop
# time exactly when it has none and bury the log, so shedding is reported once per interval.
SHED_REPORT_INTERVAL_S = 10.0


class ShedLog:
    """One WARNING per route and model per interval, with how many requests were refused at
    capacity since the last one (the first refusal is reported at once). The exact counts are
    the ``segserve_requests_total`` series with status 503."""

    def __init__(self, interval_s: float = SHED_REPORT_INTERVAL_S, clock: Clock | None = None):
        self.interval_s = interval_s
        self.clock = clock or MonotonicClock()
        self._pending: dict[tuple[str, str], int] = {}
        self._reported_at: dict[tuple[str, str], float] = {}

    def refused(self, route: str, model: str, reason: str) -> None:
        key = (route, model)
        count = self._pending.get(key, 0) + 1
        now = self.clock.now()
        last = self._reported_at.get(key)
        if last is not None and now - last < self.interval_s:
            self._pending[key] = count
            return
        since = "" if last is None else f" in the last {now - last:.0f} s"
        log.warning("%s %s: refused %d request(s) at capacity%s: %s", route, model, count, since, reason)
        self._reported_at[key] = now
        self._pending[key] = 0


shed_log = ShedLog()


class Observation:
    """``obs = Observation(metrics, route, model)`` when the request arrives; ``obs.model`` is
    updated once the model is resolved; ``obs.error(exc)`` for whatever the handling raised;
    ``obs.done(status)`` exactly once, with the status the transport answered."""

    def __init__(self, metrics: Metrics, route: str, model: str | None, request_id: str | None = None):
        self.started = time.perf_counter()
        self._metrics = metrics
        self.route = route
        self.model = model or "-"
        if request_id is not None:  # HTTP sets it in its middleware; gRPC here
            request_id_var.set(request_id)
        self.request_id = request_id_var.get()

    def deadline(self, timeout_ms: int | None, default_s: float, limit_s: float | None = None) -> float:
        """The request's deadline on the monotonic clock (the batcher's): ``timeout_ms`` or the
        server's default, and never later than ``limit_s`` from now (e.g. gRPC's own deadline)."""
        timeout_s = timeout_ms / 1000 if timeout_ms else default_s
        if limit_s is not None:
            timeout_s = min(timeout_s, limit_s)
        return time.monotonic() + timeout_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def error(self, exc: BaseException) -> ServiceError:
        """A domain error as it is; anything else is the server's fault: logged with its
        traceback (the log line carries the request id) and answered as an InternalError."""
        if isinstance(exc, QueueFull):
            shed_log.refused(self.route, self.model, exc.message)
            return exc
        if isinstance(exc, ServiceError):
            if exc.server_side:
                log.warning("%s %s: %s: %s", self.route, self.model, exc.code, exc.message)
            return exc
        log.error("%s %s failed", self.route, self.model, exc_info=exc)
        return InternalError(f"internal error; see the server log for request id {self.request_id}")

    def done(self, status: str) -> None:
        self._metrics.requests.labels(self.model, self.route, status).inc()
        self._metrics.latency.labels(self.model, self.route).observe(self.elapsed())
