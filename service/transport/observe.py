"""One request as every transport observes it: its request id, its deadline, how its errors
are classified and logged, and the two metrics it leaves (count by status, latency).
HTTP ``/segment``, ``/segment/video`` and gRPC ``ModelInfer`` all go through ``Observation``;
each transport only maps the resulting ``ServiceError`` to its own status codes."""

from __future__ import annotations

import logging
import time

from segserve.errors import InternalError, ServiceError
from segserve.logs import request_id_var
from segserve.metrics import Metrics

log = logging.getLogger(__name__)

# The longest deadline a request may ask for (HTTP's timeout_ms, gRPC's timeout_ms parameter).
MAX_TIMEOUT_MS = 600_000


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
        if isinstance(exc, ServiceError):
            if exc.server_side:
                log.warning("%s %s: %s: %s", self.route, self.model, exc.code, exc.message)
            return exc
        log.error("%s %s failed", self.route, self.model, exc_info=exc)
        return InternalError(f"internal error; see the server log for request id {self.request_id}")

    def done(self, status: str) -> None:
        self._metrics.requests.labels(self.model, self.route, status).inc()
        self._metrics.latency.labels(self.model, self.route).observe(self.elapsed())
