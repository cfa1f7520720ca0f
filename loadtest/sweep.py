"""Concurrency sweep (closed loop) and arrival-rate sweep (open loop) against a running
segserve, with the server's own queue/compute split per level, written up as a report.

    python -m segserve_loadtest.sweep --url http://127.0.0.1:8000 --model lraspp_mobilenet_v3_large \
        --out out/sweep --levels 1,2,4,8,16,32,64 --duration 10 --open-loop-rates auto --slo-p99-ms 500

``--open-loop-rates auto`` (the default) picks rates at 25/50/75/90/110 % of the best
closed-loop throughput, so the open loop straddles the server's capacity; ``none`` skips it.
Outputs in --out: sweep.csv, sweep.json, three PNG plots and report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from dataclasses import asdict
from pathlib import Path

import httpx

from segserve_loadtest import report
from segserve_loadtest.ab import segment_url
from segserve_loadtest.generators import RunStats, closed_loop, open_loop
from segserve_loadtest.payloads import Payload, default_images, image_from_file
from segserve_loadtest.results import CLOSED, OPEN, LevelResult, SweepResult
from segserve_loadtest.server_metrics import ServerDelta, delta, scrape

AUTO_RATE_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.1)
WARMUP_REQUESTS = 8  # first requests pay for lazy init (sessions, allocator, sockets)


def server_model(base_url: str, model: str | None) -> dict:
    """The /v1/models entry of ``model``, or of the server's default model when None."""
    try:
        listing = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=10).raise_for_status().json()
    except httpx.HTTPError as err:
        raise SystemExit(f"cannot list models at {base_url}: {err}") from None
    name = model or listing.get("default_model") or listing["models"][0]["name"]
    for entry in listing["models"]:
        if entry["name"] == name:
            return entry
    raise SystemExit(f"model {name!r} is not served at {base_url}; served: {[m['name'] for m in listing['models']]}")


def measure(mode: str, level: float, stats: RunStats, server: ServerDelta) -> LevelResult:
    recorder = stats.recorder
    return LevelResult(
        mode=mode,
        level=level,
        window_s=round(stats.window_s, 3),
        elapsed_s=round(stats.elapsed_s, 3),
        requests=recorder.requests,
        ok=recorder.ok,
        errors=recorder.requests - recorder.ok,
        throughput_rps=recorder.ok_in_window / stats.window_s,
        latency_ms=recorder.latency_ms(),
        status_counts=dict(recorder.statuses),
        exception_counts=dict(recorder.exceptions),
        client_cpu_util=stats.client_cpu_s / stats.elapsed_s if stats.elapsed_s else 0.0,
        server=asdict(server),
        offered_rps=stats.offered_rps,
        max_send_lag_ms=stats.max_send_lag_ms,
        unfinished=stats.unfinished,
        hdr_histogram=recorder.encoded_histogram(),
    )


def run_level(metrics_client: httpx.Client, base_url: str, url: str, model: str, payload: Payload,
              mode: str, level: float, args: argparse.Namespace) -> LevelResult:
    before = scrape(metrics_client, base_url)
    if mode == CLOSED:
        load = closed_loop(url, payload, int(level), args.duration, args.max_requests, args.timeout)
    else:
        load = open_loop(url, payload, level, args.duration, args.max_requests, args.timeout)
    stats = asyncio.run(load)
    after = scrape(metrics_client, base_url)  # the level's requests have all answered or timed out
    result = measure(mode, level, stats, delta(before, after, model))
    lat = result.latency_ms
    print(f"{mode:>6} {result.label():>10}: {result.throughput_rps:7.1f} req/s  "
          f"p50 {lat['p50'] or 0:7.1f}  p99 {lat['p99'] or 0:7.1f} ms  errors {result.errors}/{result.requests}  "
          f"batch {result.server['batch_size'] or 0:.2f}  client cpu {result.client_cpu_util:.0%}", flush=True)
    return result


def auto_rates(closed: list[LevelResult]) -> list[float]:
    peak = max((level.throughput_rps for level in closed), default=0.0)
    if peak <= 0:
        raise SystemExit("no closed-loop throughput to derive open-loop rates from; pass --open-loop-rates")
    return [round(peak * fraction, 1) for fraction in AUTO_RATE_FRACTIONS]


def run_sweep(args: argparse.Namespace) -> SweepResult:
    entry = server_model(args.url, args.model)
    payload = image_from_file(args.image) if args.image else default_images()[0]
    url = segment_url(args.url, entry["name"])
    result = SweepResult(
        url=args.url, model=entry["name"], payload={"name": payload.name, "content_type": payload.content_type,
                                                     "bytes": len(payload.body)},
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        duration_s=args.duration, slo_p99_ms=args.slo_p99_ms, server_model=entry,
        # Client and server share this machine: its size and load frame every figure.
        host={"cpu_count": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
    )
    asyncio.run(closed_loop(url, payload, 1, args.duration, WARMUP_REQUESTS, args.timeout))
    with httpx.Client() as metrics_client:
        for concurrency in args.levels:
            result.levels.append(run_level(metrics_client, args.url, url, entry["name"], payload, CLOSED, concurrency, args))
        rates = auto_rates(result.of_mode(CLOSED)) if args.open_loop_rates == "auto" else args.open_loop_rates
        for rate in rates:
            result.levels.append(run_level(metrics_client, args.url, url, entry["name"], payload, OPEN, rate, args))
    return result


def parse_rates(text: str) -> list[float] | str:
    if text == "auto":
        return text
    if text in ("", "none"):
        return []
    return [float(v) for v in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="model name (default: the server's default model)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--levels", type=lambda s: [int(v) for v in s.split(",") if v], default=[1, 2, 4, 8, 16, 32, 64],
                        help="closed-loop concurrencies (default 1,2,4,8,16,32,64; empty for none)")
    parser.add_argument("--open-loop-rates", type=parse_rates, default="auto",
                        help="requests/s, comma-separated, or auto (default) or none")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap per level")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--image", type=Path, help="image to send (default: a generated 640x480 JPEG)")
    parser.add_argument("--slo-p99-ms", type=float, default=500.0, help="p99 objective drawn and checked in the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_sweep(args)
    written = report.write_all(result, args.out)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
