"""Load generators on asyncio + httpx: closed loop (fixed concurrency) and open loop (fixed
arrival rate). Both are bounded by time and by request count.

Closed-loop latency is measured from the actual send. Open-loop latency is measured from
the *intended* send time of a fixed schedule: when the server (or this client) falls
behind, the wait shows up in the percentiles instead of silently lowering the offered
load -- the coordinated-omission correction that a closed loop cannot make.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from hdrh.histogram import HdrHistogram

from segserve_loadtest.payloads import Payload

HDR_MAX_US = 120_000_000  # 2 min: anything slower is clamped (and is an error anyway)
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}


@dataclass
class Recorder:
    """Latencies of 200 answers in an HDR histogram (µs, 3 significant digits); everything
    else counted by status code or exception type.

    Throughput counts only the 200s that complete inside the measurement window: the
    requests still in flight when it closes drain at falling concurrency, and counting
    their drain time would understate the rate at high concurrency (their latencies do
    count)."""

    window_end: float = float("inf")  # perf_counter time
    histogram: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, HDR_MAX_US, 3))
    statuses: Counter = field(default_factory=Counter)
    exceptions: Counter = field(default_factory=Counter)
    ok_in_window: int = 0

    def record(self, status: int, latency_s: float) -> None:
        self.statuses[str(status)] += 1
        if status == 200:
            self.histogram.record_value(min(HDR_MAX_US, max(1, round(latency_s * 1e6))))
            self.ok_in_window += time.perf_counter() <= self.window_end

    def record_exception(self, exc: BaseException) -> None:
        self.exceptions[type(exc).__name__] += 1

    @property
    def ok(self) -> int:
        return self.statuses["200"]

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.exceptions.values())

    def latency_ms(self) -> dict[str, float | None]:
        if not self.histogram.get_total_count():
            return {name: None for name in (*PERCENTILES, "max", "mean")}
        summary = {name: self.histogram.get_value_at_percentile(p) / 1000 for name, p in PERCENTILES.items()}
        summary["max"] = self.histogram.get_max_value() / 1000
        summary["mean"] = self.histogram.get_mean_value() / 1000
        return summary

    def encoded_histogram(self) -> str:
        encoded = self.histogram.encode()
        return encoded.decode() if isinstance(encoded, bytes) else encoded


@dataclass
class RunStats:
    recorder: Recorder
    window_s: float  # the measurement window: sends happen inside it
    elapsed_s: float  # window plus the drain of requests in flight at its end
    client_cpu_s: float
    offered_rps: float | None = None
    max_send_lag_ms: float | None = None
    unfinished: int = 0


def make_client(connections: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    # The pool wait shares the request timeout: in the open loop, a request queued for a
    # connection is late, and that lateness belongs in its latency.
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s))


async def _send(client: httpx.AsyncClient, url: str, payload: Payload, recorder: Recorder, started: float,
                headers: dict[str, str] | None = None) -> None:
    try:
        response = await client.post(url, content=payload.body, headers={"Content-Type": payload.content_type, **(headers or {})})
    except httpx.HTTPError as exc:
        recorder.record_exception(exc)
        return
    recorder.record(response.status_code, time.perf_counter() - started)


async def closed_loop(url: str, payload: Payload, concurrency: int, duration_s: float,
                      max_requests: int, timeout_s: float) -> RunStats:
    recorder = Recorder()
    remaining = max_requests

    async def worker(client: httpx.AsyncClient, deadline: float) -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            await _send(client, url, payload, recorder, time.perf_counter())

    async with make_client(concurrency, timeout_s) as client:
        cpu0, start = time.process_time(), time.perf_counter()
        recorder.window_end = start + duration_s
        await asyncio.gather(*(worker(client, recorder.window_end) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    # A count-bounded level may finish before its deadline: then the window is what it took.
    return RunStats(recorder, min(duration_s, elapsed), elapsed, time.process_time() - cpu0)


async def open_loop(url: str, payload: Payload, rate_rps: float, duration_s: float,
                    max_requests: int, timeout_s: float, max_connections: int = 256,
                    headers: dict[str, str] | None = None) -> RunStats:
    """Send request i at start + i/rate. In-flight requests past the drain time (the
    request timeout) are cancelled and counted as unfinished errors. ``headers``: sent with
    every request besides the payload's Content-Type (a KServe binary body's header length)."""
    recorder = Recorder()
    count = min(max_requests, max(1, int(rate_rps * duration_s)))
    max_lag = 0.0
    async with make_client(max_connections, timeout_s) as client:
        cpu0 = time.process_time()
        start = time.perf_counter()
        window_s = count / rate_rps
        recorder.window_end = start + window_s
        tasks = []
        for index in range(count):
            intended = start + index / rate_rps
            if (delay := intended - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            max_lag = max(max_lag, time.perf_counter() - intended)
            tasks.append(asyncio.create_task(_send(client, url, payload, recorder, intended, headers)))
        sent_for = time.perf_counter() - start
        _, pending = await asyncio.wait(tasks, timeout=timeout_s + 1)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - start
    for _ in pending:
        recorder.exceptions["Unfinished"] += 1
    return RunStats(recorder, window_s, elapsed, time.process_time() - cpu0,
                    offered_rps=(count - 1) / sent_for if count > 1 else None,
                    max_send_lag_ms=max_lag * 1000, unfinished=len(pending))
