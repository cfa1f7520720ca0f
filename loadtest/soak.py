"""Soak: `segserve serve` for a long run at twice its saturation throughput (`make soak`).

    python -m segserve_loadtest.soak [--duration 600] [--factor 2] [--out docs]

1. Exports the bundled default model (``shapes_lraspp``, 256x256, as `make models` does) into a
   cached repository (``.cache/soak/model_repository``) unless it is there, and starts
   ``segserve serve`` on it (a subprocess on a free loopback port, default settings).
2. Saturation: ab (-k) at concurrency 32 for ``--saturation-s`` seconds with the 640x480 JPEG of
   `make bench`; also the warm-up. Without ab, the same closed loop from Python.
3. Soak: an open loop offers ``--factor`` x saturation requests/s for ``--duration`` seconds, on a
   fixed schedule (request i at start + i/rate), each request's outcome recorded: status,
   latency from its *intended* send time, Retry-After on 503s, or the exception that took the
   answer away. Meanwhile the server's RSS is sampled every ``--rss-interval`` seconds.
4. Checks (exit 1 when one fails): every request got exactly one HTTP answer (0 lost: no
   transport error, none unanswered after the drain, and the server counted as many requests
   as the client got answers); every 503 carries a valid Retry-After; no status but 200 and
   503; RSS growth < ``--max-rss-growth`` (mean of the first minute after the warm-up minute
   vs the mean of the last minute; shorter windows for a shorter run); p99 of the 200s and
   of the 503s under their limits.
5. Writes ``OUT/soak.md`` (figures, command, machine) and ``OUT/soak.json``.

A run shares the machine with its client: on a small box the Python client's CPU (reported)
is taken from the server, so the goodput is below the ab saturation figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import httpx

from segserve_loadtest.ab import AbError, run_ab, segment_url
from segserve_loadtest.generators import closed_loop
from segserve_loadtest.payloads import Payload, default_images
from segserve_loadtest.server import SegserveProcess
from segserve_loadtest.server_metrics import scrape

MODEL = "shapes_lraspp"
EXPORT = ["--bundled"]  # as `make models` exports it, with its shipped serving settings
DEFAULT_REPOSITORY = Path(".cache/soak/model_repository")


# -- set-up --------------------------------------------------------------------------------


def ensure_model(repository: Path) -> list[str]:
    """`segserve export` of the bundled default model unless the repository has it; returns the command."""
    command = [sys.executable, "-m", "segserve", "export", *EXPORT, "--repository", str(repository), "--skip-existing"]
    subprocess.run(command, check=True)
    return command


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "memory_gb": memory_gb, "system": platform.platform(),
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# -- CPU and RSS ---------------------------------------------------------------------------


def cpu_snapshot(pid: int) -> dict | None:
    """Machine-wide busy CPU seconds (/proc/stat) and the server's own (/proc/PID/stat)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return {"machine_busy_s": (sum(fields[:8]) - idle) / ticks, "server_s": (int(stat[11]) + int(stat[12])) / ticks,
                "at": time.perf_counter()}
    except (OSError, ValueError, IndexError):
        return None


def cpu_use(before: dict | None, after: dict | None, client_cpu_s: float) -> dict | None:
    """Cores used over the soak: by the server, by this client, by everything else on the machine."""
    if not before or not after:
        return None
    wall = after["at"] - before["at"]
    server = after["server_s"] - before["server_s"]
    busy = after["machine_busy_s"] - before["machine_busy_s"]
    return {"server_cores": round(server / wall, 2), "client_cores": round(client_cpu_s / wall, 2),
            "other_cores": round(max(0.0, busy - server - client_cpu_s) / wall, 2)}




def rss_bytes(pid: int) -> int:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler(threading.Thread):
    """(seconds since ``origin``, RSS bytes) every ``interval_s``, until stopped."""

    def __init__(self, pid: int, interval_s: float, origin: float):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.interval_s, self.origin = pid, interval_s, origin
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append((time.perf_counter() - self.origin, rss_bytes(self.pid)))
            except (OSError, RuntimeError):
                return  # the server is gone: the soak's own checks will say so
            self._done.wait(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


# -- the open loop -------------------------------------------------------------------------


@dataclass
class Outcomes:
    """One entry per request: intended send time (s from the start), latency (s, from the
    intended send), HTTP status (None: no answer), Retry-After valid (503s), exception name."""

    sent_at: list[float] = field(default_factory=list)
    latency_s: list[float | None] = field(default_factory=list)
    status: list[int | None] = field(default_factory=list)
    retry_after_ok: list[bool | None] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)

    def add(self) -> int:
        for column in (self.latency_s, self.status, self.retry_after_ok, self.error):
            column.append(None)
        return len(self.sent_at) - 1


def valid_retry_after(value: str | None) -> bool:
    return value is not None and value.strip().isdigit() and int(value) >= 1


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, dict[str, str]]:
    """One request on an open HTTP/1.1 connection, its whole answer read: (status, lower-cased
    headers; ``connection: close`` when the answer was delimited by the close)."""
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.read()  # delimited by the close
        headers["connection"] = "close"
    return status, headers



async def back_to_back(host: str, port: int, raw: bytes, *, going: Callable[[], bool],
                       answered: Callable[[int, dict[str, str], float], None], refused: Callable[[], bool],
                       lost: Callable[[], None]) -> None:
    """One client of a closed loop (ab's): ``raw`` sent again as soon as its answer is read, on a
    kept-alive connection, a new one when the server closes it, while ``going()``. Each whole answer
    goes to ``answered(status, headers, sent_at)`` (perf_counter); a connection that cannot be
    opened to ``refused()``, which says whether to try again (50 ms later); one that breaks with a
    request sent to ``lost()``."""
    while going():
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        except OSError:
            if not refused():
                return
            await asyncio.sleep(0.05)
            continue
        try:
            while going():
                sent = time.perf_counter()
                status, headers = await exchange(reader, writer, raw)
                answered(status, headers, sent)
                if headers.get("connection", "").lower() == "close":
                    break
        except (OSError, asyncio.IncompleteReadError):
            lost()
        finally:
            writer.close()

class Http11Pool:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one pre-encoded POST, sent
    as is. httpx costs ~1-2 ms of CPU per request, which at 2x saturation on a small box takes
    a good part of a core from the server and lets requests queue inside the client; this
    costs a tenth of that. No retries (a retry would hide a lost request): a connection is
    reused only while the server keeps it open and for at most ``max_idle_s`` (below
    uvicorn's keep-alive timeout, so the server never closes one under a request)."""

    def __init__(self, host: str, port: int, max_idle_s: float = 10.0):
        self.host, self.port, self.max_idle_s = host, port, max_idle_s
        self.idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self.idle:
            used, reader, writer = self.idle.pop()
            if now - used < self.max_idle_s and not reader.at_eof():
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def request(self, raw: bytes) -> tuple[int, dict[str, str]]:
        """Send ``raw`` and read the whole answer: (status, lower-cased headers)."""
        reader, writer = await self._connection()
        try:
            status, headers = await exchange(reader, writer, raw)
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((time.monotonic(), reader, writer))
        return status, headers

    def close(self) -> None:
        for _, _, writer in self.idle:
            writer.close()
        self.idle.clear()


def post_bytes(url: str, payload: Payload) -> bytes:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {payload.content_type}\r\n"
            f"Content-Length: {len(payload.body)}\r\nUser-Agent: segserve-soak\r\n\r\n")
    return head.encode("latin-1") + payload.body


async def soak_loop(url: str, payload: Payload, rate_rps: float, duration_s: float, timeout_s: float,
                    origin: float) -> tuple[Outcomes, dict]:
    """Request i at ``origin`` + i/rate until ``duration_s``; then waits up to ``timeout_s`` for
    the answers still due. What has no answer by then is lost (its entry keeps status None)."""
    out = Outcomes()
    parts = urlsplit(url)
    pool = Http11Pool(parts.hostname, parts.port)
    raw = post_bytes(url, payload)
    max_lag = 0.0
    in_flight: set[asyncio.Task] = set()
    peak_in_flight = 0

    async def one(index: int, intended: float) -> None:
        try:
            status, headers = await asyncio.wait_for(pool.request(raw), timeout_s)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
            out.error[index] = type(exc).__name__
            return
        out.latency_s[index] = time.perf_counter() - intended
        out.status[index] = status
        if status == 503:
            out.retry_after_ok[index] = valid_retry_after(headers.get("retry-after"))

    cpu0 = time.process_time()
    count = int(rate_rps * duration_s)
    for index in range(count):
        intended = origin + index / rate_rps
        if (delay := intended - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, time.perf_counter() - intended)
        out.sent_at.append(intended - origin)
        task = asyncio.create_task(one(out.add(), intended))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        peak_in_flight = max(peak_in_flight, len(in_flight))
    sent_for = time.perf_counter() - origin
    unanswered = 0
    if in_flight:
        _, pending = await asyncio.wait(set(in_flight), timeout=timeout_s + 5)
        unanswered = len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    pool.close()
    client_stats = {
        "requests": count,
        "offered_rps": round((count - 1) / sent_for, 2) if count > 1 else None,
        "max_send_lag_ms": round(max_lag * 1000, 1),
        "peak_in_flight": peak_in_flight,
        "connections_opened": pool.opened,
        "unanswered_after_drain": unanswered,
        "client_cpu_s": round(time.process_time() - cpu0, 1),
    }
    return out, client_stats


# -- analysis ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def latency_summary(values_s: list[float]) -> dict:
    ms = [v * 1000 for v in values_s]
    return {"count": len(ms), **{f"p{p:g}": round(percentile(ms, p), 1) if ms else None for p in (50, 90, 99, 99.9)},
            "max": round(max(ms), 1) if ms else None}


def windows(duration_s: float) -> tuple[float, float]:
    """(warm-up, window): a minute each on a 10-minute run, a fifth of a shorter one."""
    span = min(60.0, duration_s / 5)
    return span, span


def rss_growth(samples: list[tuple[float, int]], duration_s: float) -> dict:
    warmup, span = windows(duration_s)
    first = [rss for t, rss in samples if warmup <= t < warmup + span]
    last = [rss for t, rss in samples if duration_s - span <= t <= duration_s]
    if not first or not last:
        return {"first_mb": None, "last_mb": None, "growth": None, "samples": len(samples)}
    first_mean, last_mean = statistics.fmean(first), statistics.fmean(last)
    return {
        "first_window_s": [round(warmup, 1), round(warmup + span, 1)],
        "last_window_s": [round(duration_s - span, 1), round(duration_s, 1)],
        "first_mb": round(first_mean / 2**20, 1),
        "last_mb": round(last_mean / 2**20, 1),
        "growth": round(last_mean / first_mean - 1, 4),
        "min_mb": round(min(r for _, r in samples) / 2**20, 1),
        "max_mb": round(max(r for _, r in samples) / 2**20, 1),
        "samples": len(samples),
    }


def per_window(out: Outcomes, samples: list[tuple[float, int]], duration_s: float, step_s: float) -> list[dict]:
    rows = []
    for start in range(0, max(1, math.ceil(duration_s / step_s))):
        lo, hi = start * step_s, min(duration_s, (start + 1) * step_s)
        picked = [i for i, t in enumerate(out.sent_at) if lo <= t < hi]
        statuses = Counter(out.status[i] for i in picked)
        ok = [out.latency_s[i] for i in picked if out.status[i] == 200]
        shed = [out.latency_s[i] for i in picked if out.status[i] == 503]
        rss = [r for t, r in samples if lo <= t < hi]
        span = hi - lo
        rows.append({
            "from_s": round(lo), "to_s": round(hi), "sent_rps": round(len(picked) / span, 1),
            "ok_rps": round(statuses[200] / span, 1), "shed_rps": round(statuses[503] / span, 1),
            "other": sum(n for s, n in statuses.items() if s not in (200, 503)),
            "p99_200_ms": round(percentile(ok, 99) * 1000) if ok else None,
            "p99_503_ms": round(percentile(shed, 99) * 1000, 1) if shed else None,
            "rss_mb": round(statistics.fmean(rss) / 2**20, 1) if rss else None,
        })
    return rows


def server_requests(before: dict, after: dict, route: str = "segment") -> dict[str, int]:
    """segserve_requests_total of ``route`` grown between two scrapes, by status."""
    grown: Counter = Counter()
    for (name, labels), value in after.items():
        labels = dict(labels)
        if name == "segserve_requests_total" and labels.get("route") == route:
            grown[labels.get("status", "?")] += int(round(value - before.get((name, frozenset(labels.items())), 0.0)))
    return {status: n for status, n in grown.items() if n}


def analyse(out: Outcomes, client: dict, samples: list[tuple[float, int]], server_counted: dict[str, int],
            args: argparse.Namespace, saturation_rps: float) -> dict:
    statuses = Counter(str(s) for s in out.status if s is not None)
    errors = Counter(e for e in out.error if e)
    answered = sum(statuses.values())
    lost = len(out.status) - answered  # transport errors and requests unanswered after the drain
    ok = [lat for lat, s in zip(out.latency_s, out.status) if s == 200]
    shed = [lat for lat, s in zip(out.latency_s, out.status) if s == 503]
    missing_retry_after = sum(1 for s, r in zip(out.status, out.retry_after_ok) if s == 503 and not r)
    rss = rss_growth(samples, args.duration)
    ok_200 = latency_summary(ok)
    ok_503 = latency_summary(shed)
    unexpected = {s: n for s, n in statuses.items() if s not in ("200", "503")}
    counted = sum(server_counted.values())
    checks = {
        "lost requests = 0": {"ok": lost == 0, "value": lost},
        "server counted every answer": {"ok": counted == answered and server_counted == dict(statuses),
                                        "value": f"server {counted} ({server_counted}), client {answered}"},
        "every 503 has Retry-After": {"ok": missing_retry_after == 0, "value": f"{missing_retry_after} of {statuses['503']} without"},
        "only 200 and 503": {"ok": not unexpected, "value": unexpected or "none other"},
        f"RSS growth < {args.max_rss_growth:.0%}": {"ok": rss["growth"] is not None and rss["growth"] < args.max_rss_growth,
                                                    "value": rss["growth"]},
        f"p99 of 200s < {args.max_p99_200_ms:g} ms": {"ok": ok_200["p99"] is not None and ok_200["p99"] < args.max_p99_200_ms,
                                                      "value": ok_200["p99"]},
        f"p99 of 503s < {args.max_p99_503_ms:g} ms": {"ok": ok_503["p99"] is None or ok_503["p99"] < args.max_p99_503_ms,
                                                      "value": ok_503["p99"]},
    }
    return {
        "requests": len(out.status),
        "answered": answered,
        "lost": lost,
        "transport_errors": dict(errors),
        "statuses": dict(statuses),
        "server_counted": server_counted,
        "goodput_rps": round(statuses["200"] / args.duration, 1),
        "goodput_vs_saturation": round(statuses["200"] / args.duration / saturation_rps, 3),
        "shed_fraction": round(statuses["503"] / max(1, answered), 3),
        "latency_200_ms": ok_200,
        "latency_503_ms": ok_503,
        "rss": rss,
        "client": client,
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
    }


# -- report ----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    r, sat, m = report["result"], report["saturation"], report["machine"]
    offered = f"{report['factor']:g}x saturation" if report["factor"] else "a set rate"
    cpu = r["client"].get("cpu") or {}
    lines = [
        "# Soak: 2x saturation (`make soak`)",
        "",
        "Written by `python -m segserve_loadtest.soak` (loadtest/soak.py); the figures below are its last run.",
        "",
        f"- command: `{report['command']}`",
        f"- when: {report['started_utc']} UTC, commit `{report['commit']}`",
        f"- machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gb']} GB, {m['system']}, Python {m['python']}; "
        f"load average at start {', '.join(map(str, m['load_average_at_start']))}",
        f"- server: `{report['server_command']}` (default settings), model `{report['model']}` "
        f"(`segserve export {' '.join(EXPORT)}`), body `{report['payload']['name']}` ({report['payload']['bytes']} bytes)",
        f"- saturation: {sat['method']}: **{sat['rps']} req/s** (p50 {sat.get('p50_ms')} ms, p99 {sat.get('p99_ms')} ms, "
        f"non-2xx {sat.get('non_2xx')})",
        f"- soak: open loop at {offered} = **{report['rate_rps']} req/s** "
        f"offered for {report['duration_s']:g} s "
        f"(achieved {r['client']['offered_rps']} req/s, max send lag {r['client']['max_send_lag_ms']} ms, "
        f"peak {r['client']['peak_in_flight']} in flight, {r['client']['connections_opened']} connections opened, "
        f"client CPU {r['client']['client_cpu_s']} s)",
        f"- CPU over the soak (cores of {m['cpus']}): server {cpu.get('server_cores')}, this client {cpu.get('client_cores')}, "
        f"other processes {cpu.get('other_cores')}; load average at end {', '.join(map(str, m.get('load_average_at_end', [])))}",
        "",
        "| check | result | value |",
        "|---|---|---|",
        *[f"| {name} | {'pass' if c['ok'] else '**FAIL**'} | {c['value']} |" for name, c in r["checks"].items()],
        "",
        f"**{'PASSED' if r['passed'] else 'FAILED'}**",
        "",
        "| requests | answered | lost | 200 | 503 | other | goodput req/s | goodput / saturation | shed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['requests']} | {r['answered']} | {r['lost']} | {r['statuses'].get('200', 0)} | {r['statuses'].get('503', 0)} | "
        f"{sum(n for s, n in r['statuses'].items() if s not in ('200', '503'))} | {r['goodput_rps']} | "
        f"{r['goodput_vs_saturation']:.2f} | {r['shed_fraction']:.0%} |",
        "",
        "| latency (from intended send) | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {name} | {s['count']} | {s['p50']} | {s['p90']} | {s['p99']} | {s['p99.9']} | {s['max']} |"
          for name, s in (("200", r["latency_200_ms"]), ("503", r["latency_503_ms"]))],
        "",
        f"Server RSS (every {report['rss_interval_s']:g} s, {r['rss']['samples']} samples): mean "
        f"{r['rss']['first_mb']} MB over {r['rss'].get('first_window_s')} s vs {r['rss']['last_mb']} MB over "
        f"{r['rss'].get('last_window_s')} s = **{r['rss']['growth']:+.2%}** (min {r['rss'].get('min_mb')}, "
        f"max {r['rss'].get('max_mb')} MB)." if r["rss"]["growth"] is not None else "Server RSS: too few samples.",
        "",
        "| from s | to s | sent req/s | 200/s | 503/s | other | p99 200 ms | p99 503 ms | RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {w['from_s']} | {w['to_s']} | {w['sent_rps']} | {w['ok_rps']} | {w['shed_rps']} | {w['other']} | "
          f"{w['p99_200_ms']} | {w['p99_503_ms']} | {w['rss_mb']} |" for w in report["windows"]],
        "",
        "Lost = requests without an HTTP answer (a transport error, or none by the end of the drain); the server's own",
        "count (`segserve_requests_total{route=\"segment\"}` before vs after) must equal the client's answers, status by",
        "status. RSS growth compares the first minute after a minute of warm-up with the last minute (a fifth of the",
        "run each on shorter runs). The client runs on the same machine and its CPU is taken from the server.",
        "",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


def measure_saturation(url: str, payload: Payload, seconds: float, concurrency: int) -> dict:
    if shutil.which("ab"):
        try:
            ab = run_ab(url, payload, requests=1_000_000, concurrency=concurrency, time_limit_s=seconds)
            return {"method": f"ab -k -c {concurrency} for {seconds:g} s", "rps": round(ab["requests_per_second"], 1),
                    "p50_ms": ab["percentiles_ms"].get(50), "p99_ms": ab["percentiles_ms"].get(99),
                    "non_2xx": ab.get("non_2xx_responses", 0), "failed": ab.get("failed_requests"), "command": ab["command"]}
        except AbError as exc:
            print(f"soak: ab failed ({exc}); measuring saturation from Python", file=sys.stderr)
    stats = asyncio.run(closed_loop(url, payload, concurrency, seconds, 1_000_000, 60.0))
    latency = stats.recorder.latency_ms()
    return {"method": f"closed loop (Python) at concurrency {concurrency} for {seconds:g} s",
            "rps": round(stats.recorder.ok_in_window / stats.window_s, 1), "p50_ms": latency["p50"], "p99_ms": latency["p99"],
            "non_2xx": stats.recorder.requests - stats.recorder.ok}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.soak", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds at the soak rate (default 600)")
    parser.add_argument("--factor", type=float, default=2.0, help="offered load / saturation throughput (default 2)")
    parser.add_argument("--rate", type=float, help="offered req/s instead of factor x measured saturation")
    parser.add_argument("--saturation-s", type=float, default=20.0, help="seconds of the saturation measurement (default 20)")
    parser.add_argument("--saturation-concurrency", type=int, default=32)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY,
                        help=f"where the bundled model is exported once (default {DEFAULT_REPOSITORY})")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s (server deadline: 30)")
    parser.add_argument("--rss-interval", type=float, default=2.0)
    parser.add_argument("--max-rss-growth", type=float, default=0.05)
    parser.add_argument("--max-p99-200-ms", type=float, default=15_000.0,
                        help="limit on the p99 of 200s (default 15000: half the server's 30 s deadline)")
    parser.add_argument("--max-p99-503-ms", type=float, default=1000.0,
                        help="limit on the p99 of 503s (default 1000: a refusal that takes a second is no refusal)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="soak.md and soak.json go here (default docs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m segserve_loadtest.soak", *([shlex.join(given)] if given else [])])
    started_utc = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    facts = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_model(args.model_repository)
    payload = default_images()[0]  # the 640x480 JPEG of make bench
    with SegserveProcess(args.model_repository, models=[MODEL]) as server:
        print(f"soak: server pid {server.process.pid} at {server.url}, log {server.log_path}", flush=True)
        url = segment_url(server.url, MODEL)
        saturation = measure_saturation(url, payload, args.saturation_s, args.saturation_concurrency)
        rate = args.rate or round(args.factor * saturation["rps"], 1)
        print(f"soak: saturation {saturation['rps']} req/s ({saturation['method']}); offering {rate} req/s for "
              f"{args.duration:g} s", flush=True)
        with httpx.Client(timeout=10) as metrics_client:
            before = scrape(metrics_client, server.url)
            origin = time.perf_counter() + 0.5
            sampler = RssSampler(server.process.pid, args.rss_interval, origin)
            sampler.start()
            cpu_before = cpu_snapshot(server.process.pid)
            try:
                out, client = asyncio.run(soak_loop(url, payload, rate, args.duration, args.timeout, origin))
            finally:
                sampler.stop()
            client["cpu"] = cpu_use(cpu_before, cpu_snapshot(server.process.pid), client["client_cpu_s"])
            facts["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            alive = server.process.poll() is None
            after = scrape(metrics_client, server.url) if alive else before
        server_counted = server_requests(before, after)
        result = analyse(out, client, sampler.samples, server_counted, args, saturation["rps"])
        result["checks"]["server stayed up"] = {"ok": alive, "value": "up" if alive else f"exit {server.process.returncode}"}
        result["passed"] = result["passed"] and alive
        server_command = f"segserve serve --model-repository {args.model_repository} --models {MODEL}"
        log_tail = server.log_tail(20)
    report = {
        "command": command, "started_utc": started_utc, "commit": git_commit(), "machine": facts, "model": MODEL,
        "server_command": server_command, "payload": {"name": payload.name, "bytes": len(payload.body)},
        "saturation": saturation, "factor": args.factor if not args.rate else None, "rate_rps": rate,
        "duration_s": args.duration, "rss_interval_s": args.rss_interval, "result": result,
        "windows": per_window(out, sampler.samples, args.duration, 60.0 if args.duration >= 300 else args.duration / 6),
        "rss_samples": [(round(t, 1), rss) for t, rss in sampler.samples],
    }
    (args.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "soak.md").write_text(markdown(report))
    for name, check in result["checks"].items():
        print(f"soak: {'pass' if check['ok'] else 'FAIL'}  {name}: {check['value']}")
    print(f"soak: {'PASSED' if result['passed'] else 'FAILED'}; report {args.out / 'soak.md'}")
    if not result["passed"]:
        print("soak: server log tail:\n" + log_tail, file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
