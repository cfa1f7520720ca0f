"""Prometheus metrics. One registry per app instance, so several servers can live in one
process (tests) without colliding. Across the processes of ``segserve serve --workers N``
(``share_across_processes``), prometheus_client's multiprocess mode: each process writes its
values to a file of a shared folder, and a scrape in any of them adds up every process's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's: its files' folder, inherited by child processes


def share_across_processes(directory: Path) -> None:
    """Multiprocess mode for this process (its metrics made from now on) and the processes it
    starts (prometheus_client reads the variable when they import it)."""
    os.environ[MULTIPROC_DIR] = str(directory)
    values.ValueClass = values.MultiProcessValue()


def process_gone(pid: int) -> None:
    """A process of the group exited: its live gauges leave the scrape (counters stay counted)."""
    multiprocess.mark_process_dead(pid)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("segserve_requests", "Requests by model, route and status code", ["model", "route", "status"], registry=r)
        self.latency = Histogram(
            "segserve_request_latency_seconds", "End-to-end request latency (body read to response)", ["model", "route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_time = Histogram(
            "segserve_queue_time_seconds", "Time a request waited in the batching queue", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.compute_time = Histogram(
            "segserve_compute_time_seconds", "Engine time of the batch a request ran in", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("segserve_batch_size", "Requests per executed batch", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("segserve_queue_depth", "Requests waiting in the batching queue", ["model"], registry=r,
                                 multiprocess_mode="livesum")
        self.dropped = Counter("segserve_dropped", "Requests dropped before compute, by reason", ["model", "reason"], registry=r)
        self.failed_batches = Counter("segserve_failed_batches", "Batches whose engine run raised", ["model"], registry=r)
        self.unauthorized = Counter(
            "segserve_unauthorized", "Requests refused for a missing or wrong API key, by protocol", ["protocol"], registry=r
        )
        self.model_ready = Gauge("segserve_model_ready", "1 when the model serves, 0 otherwise", ["model"], registry=r,
                                 multiprocess_mode="livemin")
        self.slow_clients = Counter(
            "segserve_slow_clients", "HTTP connections closed for not sending their request headers in time", registry=r
        )

    def exposition(self) -> bytes:
        """The scrape: this registry's metrics, or every process's in multiprocess mode (blocking: reads files)."""
        if MULTIPROC_DIR not in os.environ:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def batch_observer(self, model: str) -> "BatcherMetrics":
        return BatcherMetrics(self, model)


class BatcherMetrics:
    """The scheduler's BatchObserver, bound to one model's label."""

    def __init__(self, metrics: Metrics, model: str):
        self._queue_time = metrics.queue_time.labels(model)
        self._compute_time = metrics.compute_time.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self._depth = metrics.queue_depth.labels(model)
        self._failed = metrics.failed_batches.labels(model)
        self._dropped = metrics.dropped
        self._model = model

    def batch_done(self, size: int, queue_s: Sequence[float], compute_s: float, ok: bool) -> None:
        self._batch_size.observe(size)
        for q in queue_s:
            self._queue_time.observe(q)
            self._compute_time.observe(compute_s)
        if not ok:
            self._failed.inc()

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def dropped(self, reason: str) -> None:
        self._dropped.labels(self._model, reason).inc()
