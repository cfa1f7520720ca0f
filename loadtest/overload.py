"""Closed-loop overload (`make overload`): what ``ab -c 256`` does to `segserve serve` on the
bundled default model, with the refusals' latency seen apart from the answers' (ab reports
one distribution for both).

1. Saturation: ``ab -k -c 32`` for ``--seconds``: the goodput reference.
2. Overload: ``--concurrency`` keep-alive connections, each sending the next POST /segment as
   soon as the last is answered (ab's closed loop, on the soak's light HTTP/1.1 client): per
   status, answers/s and latency percentiles; goodput = 200s/s over saturation; every 503
   checked for ``Retry-After``; requests sent and never answered counted as lost.
3. ``ab -c C`` itself, with and without ``-k``: answers/s, and 200s/s from its non-2xx count.
4. The closed loop's arithmetic. A refused connection comes back at once, so the refusals run
   at R = N / L (Little's law: N connections cycling refusals, L their mean latency). With the
   server's CPU per refusal measured in the same run, it prints the CPU that refusals at the
   rate for L = 20 ms would take, next to the machine's cores: what a closed loop that ignores
   ``Retry-After`` costs any server, whatever its refusal path.

    python -m segserve_loadtest.overload [--concurrency 256] [--seconds 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlsplit

from segserve_loadtest.ab import run_ab, segment_url
from segserve_loadtest.bench_overhead import server_cpu_s
from segserve_loadtest.payloads import Payload, default_images
from segserve_loadtest.server import SegserveProcess
from segserve_loadtest.soak import MODEL, back_to_back, ensure_model, measure_saturation, percentile, post_bytes, valid_retry_after

TARGET_503_P99_MS = 20.0  # issue 13's targets under ab -c 256
TARGET_GOODPUT = 0.9


async def closed_loop(url: str, concurrency: int, seconds: float, payload: Payload) -> dict:
    """``concurrency`` connections back to back for ``seconds``; per status the latencies of the
    answers that finished inside the window, and what went wrong."""
    parts = urlsplit(url)
    raw = post_bytes(url, payload)
    latencies: dict[str, list[float]] = defaultdict(list)
    problems: Counter = Counter()
    stop_at = time.perf_counter() + seconds

    def answered(status: int, headers: dict[str, str], sent: float) -> None:
        if (done := time.perf_counter()) <= stop_at:
            latencies[str(status)].append(done - sent)
        if status == 503 and not valid_retry_after(headers.get("retry-after")):
            problems["503_without_retry_after"] += 1

    def refused() -> bool:
        problems["connect_failed"] += 1
        return True

    client_cpu = time.process_time()
    await asyncio.gather(*(back_to_back(parts.hostname, parts.port, raw, going=lambda: time.perf_counter() < stop_at,
                                        answered=answered, refused=refused, lost=lambda: problems.update(["lost"]))
                           for _ in range(concurrency)))
    client_cpu = time.process_time() - client_cpu

    def summary(values: list[float]) -> dict:
        return {"count": len(values), "per_s": len(values) / seconds,
                **{f"p{p}_ms": 1000 * percentile(values, p) if values else None for p in (50, 99)},
                "mean_ms": 1000 * statistics.fmean(values) if values else None}

    return {"by_status": {status: summary(values) for status, values in sorted(latencies.items())},
            "problems": dict(problems), "client_cpu_s": client_cpu}


def little(result: dict, concurrency: int, in_flight_limit: int, server_cpu_s: float, cpu_ms_per_200: float,
           seconds: float, cores: int) -> dict:
    """The closed loop's arithmetic (module docstring, 4.), from this run's figures. A refusal's
    CPU: the server's CPU in the closed loop less its 200s at the CPU each cost at saturation,
    over the refusals."""
    refused = result["by_status"].get("503", {"count": 0, "per_s": 0.0, "mean_ms": None})
    ok = result["by_status"].get("200", {"count": 0})["count"]
    cycling = max(0, concurrency - in_flight_limit)
    rate_for_target = cycling / (TARGET_503_P99_MS / 1000)  # refusals/s for a mean (so also most) under the target
    cpu_per_refusal_ms = (1000 * server_cpu_s - ok * cpu_ms_per_200) / refused["count"] if refused["count"] else None
    return {
        "connections_cycling_refusals": cycling,
        "refusals_per_s": refused["per_s"],
        "little_mean_ms": 1000 * cycling / refused["per_s"] if refused["per_s"] else None,
        "measured_mean_ms": refused["mean_ms"],
        "server_cpu_ms_per_200": cpu_ms_per_200,
        "server_cpu_ms_per_refusal": cpu_per_refusal_ms,
        "refusals_per_s_for_target": rate_for_target,
        "cores_for_target": rate_for_target * cpu_per_refusal_ms / 1000 if cpu_per_refusal_ms else None,
        "cores": cores,
        "server_cpu_cores": server_cpu_s / seconds,
    }


def in_flight_limit(repository: Path, model: str = MODEL) -> int:
    """The model's in-flight budget as its config gives it (ModelConfig.in_flight_budget)."""
    from segserve.contract.model_config import load_config

    return load_config(repository / model).in_flight_budget


def markdown(report: dict) -> str:
    sat, loop, arithmetic = report["saturation"], report["closed_loop"], report["little"]
    ok, refused = loop["by_status"].get("200", {}), loop["by_status"].get("503", {})
    goodput = ok.get("per_s", 0.0) / sat["rps"] if sat["rps"] else 0.0
    ms = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    ms2 = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [
        f"Saturation ({sat['method']}): **{sat['rps']:.1f} req/s**.",
        "",
        f"`segserve serve --workers {report['workers']}`. Closed loop, {report['concurrency']} keep-alive connections "
        f"for {report['seconds']:g} s:",
        "",
        "| status | answers | per s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
        *[f"| {status} | {s['count']} | {s['per_s']:.1f} | {ms(s['p50_ms'])} | {ms(s['p99_ms'])} |"
          for status, s in loop["by_status"].items()],
        "",
        f"Goodput {ok.get('per_s', 0.0):.1f} / {sat['rps']:.1f} = **{goodput:.2f}** of saturation (target >= {TARGET_GOODPUT}); "
        f"503 p99 **{ms(refused.get('p99_ms'))} ms** (target < {TARGET_503_P99_MS:g}); problems: {loop['problems'] or 'none'}; "
        f"client CPU {loop['client_cpu_s'] / report['seconds']:.2f} cores, server {arithmetic['server_cpu_cores']:.2f} cores.",
        "",
        "| ab | answers/s | 200/s | non-2xx | failed | goodput |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| `{row['command']}` | {row['rps']:.1f} | {row['ok_per_s']:.1f} | {row['non_2xx']} | {row['failed']} "
          f"| {row['ok_per_s'] / sat['rps']:.2f} |" for row in report["ab"]],
    ]
    if report["workers"] == 1:  # with --workers N each worker admits its own budget: N x it before a refusal
        lines += [
            "",
            f"Little's law: {arithmetic['connections_cycling_refusals']} connections beyond the in-flight budget of "
            f"{report['in_flight_limit']} cycle refusals at {arithmetic['refusals_per_s']:.0f}/s, so their mean latency is "
            f"{ms(arithmetic['little_mean_ms'])} ms (measured {ms(arithmetic['measured_mean_ms'])} ms). A mean under "
            f"{TARGET_503_P99_MS:g} ms needs {arithmetic['refusals_per_s_for_target']:.0f} refusals/s; at the server's "
            f"{ms2(arithmetic['server_cpu_ms_per_refusal'])} ms of CPU per refusal in this run (its CPU less its 200s at "
            f"{ms2(arithmetic['server_cpu_ms_per_200'])} ms each, the saturation phase's cost) that is "
            f"{ms2(arithmetic['cores_for_target'])} cores of {arithmetic['cores']}, not counting the client's.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--workers", type=int, default=1, help="`segserve serve --workers` (1 = one process)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    repository = Path(args.repository)
    ensure_model(repository)
    payload = default_images()[0]
    log = Path(tempfile.mkdtemp(prefix="segserve-overload-")) / "server.log"
    with SegserveProcess(repository, log, models=[MODEL], args=["--workers", str(args.workers)]) as server:
        url = segment_url(server.url, MODEL)
        limit = in_flight_limit(repository)
        cpu_before = server_cpu_s(server.process.pid)
        saturation = measure_saturation(url, payload, args.seconds, 32)
        cpu_ms_per_200 = 1000 * (server_cpu_s(server.process.pid) - cpu_before) / (saturation["rps"] * args.seconds)
        cpu_before = server_cpu_s(server.process.pid)
        loop = asyncio.run(closed_loop(url, args.concurrency, args.seconds, payload))
        cpu_s = server_cpu_s(server.process.pid) - cpu_before
        ab_rows = []
        for keepalive in (True, False):
            ab = run_ab(url, payload, requests=10**6, concurrency=args.concurrency, keepalive=keepalive,
                        time_limit_s=args.seconds)
            ok = ab["complete_requests"] - ab["non_2xx_responses"] - ab["failed_requests"]
            ab_rows.append({"command": ab["command"].split(" -p ")[0].rsplit("/", 1)[-1], "rps": ab["requests_per_second"],
                            "ok_per_s": ok / ab["time_taken_s"], "non_2xx": ab["non_2xx_responses"],
                            "failed": ab["failed_requests"]})
    report = {"concurrency": args.concurrency, "seconds": args.seconds, "workers": args.workers, "in_flight_limit": limit, "saturation": saturation,
              "closed_loop": loop, "ab": ab_rows, "load_average_at_end": os.getloadavg(),
              "little": little(loop, args.concurrency, limit, cpu_s, cpu_ms_per_200, args.seconds, len(os.sched_getaffinity(0)))}
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    lost = loop["problems"].get("lost", 0) + loop["problems"].get("503_without_retry_after", 0)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
