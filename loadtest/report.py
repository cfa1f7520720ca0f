"""Sweep report: CSV, JSON, three PNG plots and a markdown page that ties them together.

    python -m segserve_loadtest.report out/sweep      # re-render from out/sweep/sweep.json
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402

from segserve_loadtest.results import CLOSED, OPEN, LevelResult, SweepResult  # noqa: E402

CSV_FILE, JSON_FILE, MARKDOWN_FILE = "sweep.csv", "sweep.json", "report.md"
THROUGHPUT_PNG = "throughput_latency.png"
P99_PNG = "p99_vs_throughput.png"
SERVER_TIME_PNG = "server_time.png"
LATENCY_KEYS = ("p50", "p90", "p95", "p99", "p99.9", "max", "mean")
CLIENT_BOUND_CPU = 0.8  # above this the load generator, not the server, may set the pace
MIN_SAMPLES_FOR_P99 = 100  # below this the 99th percentile is one of the last few samples


def meets_slo(level: LevelResult, slo_p99_ms: float | None) -> bool | None:
    p99 = level.latency_ms.get("p99")
    if slo_p99_ms is None or p99 is None:
        return None
    return p99 <= slo_p99_ms and level.errors == 0


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def csv_rows(result: SweepResult) -> list[dict]:
    rows = []
    for level in result.levels:
        server = level.server
        rows.append({
            "mode": level.mode,
            "level": level.level,
            "window_s": level.window_s,
            "elapsed_s": level.elapsed_s,
            "requests": level.requests,
            "ok": level.ok,
            "errors": level.errors,
            "error_ratio": round(level.error_ratio, 5),
            "throughput_rps": round(level.throughput_rps, 2),
            **{f"{key}_ms": _rounded(level.latency_ms[key]) for key in LATENCY_KEYS},
            "server_queue_ms": _rounded(server["queue_ms"]),
            "server_compute_ms": _rounded(server["compute_ms"]),
            "server_batch_size": _rounded(server["batch_size"]),
            "server_batches": server["batches"],
            "server_latency_ms": _rounded(server["latency_ms"]),
            "client_cpu_util": _rounded(level.client_cpu_util),
            "offered_rps": _rounded(level.offered_rps, 2),
            "max_send_lag_ms": _rounded(level.max_send_lag_ms),
            "unfinished": level.unfinished,
            "meets_slo": meets_slo(level, result.slo_p99_ms),
        })
    return rows


def write_csv(result: SweepResult, path: Path) -> None:
    rows = csv_rows(result)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["mode"])
        writer.writeheader()
        writer.writerows(rows)


def _log_y(axis) -> None:
    """Log y axis labelled 1-2-5 in plain numbers: latencies span decades under overload."""
    axis.set_yscale("log")
    axis.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_throughput_latency(result: SweepResult, path: Path) -> None:
    """(a) closed loop: throughput and latency percentiles against concurrency."""
    closed = result.of_mode(CLOSED)
    levels = [level.level for level in closed]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6), constrained_layout=True)
    top.plot(levels, [level.throughput_rps for level in closed], "o-", color="tab:blue")
    top.set_ylim(bottom=0)
    top.set_ylabel("throughput (req/s)")
    top.set_title(f"{result.model}: closed-loop concurrency sweep")
    for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^-")):
        bottom.plot(levels, [level.latency_ms[key] for level in closed], style, label=key)
    if result.slo_p99_ms is not None:
        bottom.axhline(result.slo_p99_ms, color="tab:red", linestyle=":", label=f"SLO p99 {result.slo_p99_ms:g} ms")
    latencies = [level.latency_ms[key] for level in closed for key in ("p50", "p99") if level.latency_ms[key]]
    if latencies and max(latencies) > 20 * min(latencies):
        _log_y(bottom)
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("concurrent requests (closed loop)")
    bottom.legend()
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
    if len(levels) > 1:
        bottom.set_xscale("log", base=2)
        bottom.set_xticks(levels, [f"{v:g}" for v in levels])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_p99_vs_throughput(result: SweepResult, path: Path) -> None:
    """(b) the capacity curve: p99 against achieved throughput, both loop kinds, SLO line."""
    fig, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for mode, style, name in ((CLOSED, "o-", "closed loop (label: concurrency)"),
                              (OPEN, "s--", "open loop (label: target req/s)")):
        levels = [level for level in result.of_mode(mode) if level.latency_ms["p99"] is not None]
        if not levels:
            continue
        xs = [level.throughput_rps for level in levels]
        ys = [level.latency_ms["p99"] for level in levels]
        axis.plot(xs, ys, style, label=name)
        for level, x, y in zip(levels, xs, ys):
            axis.annotate(f"{level.level:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if result.slo_p99_ms is not None:
        axis.axhline(result.slo_p99_ms, color="tab:red", linestyle=":", label=f"SLO p99 {result.slo_p99_ms:g} ms")
    _log_y(axis)
    axis.set_xlabel("achieved throughput (req/s, HTTP 200 only)")
    axis.set_ylabel("p99 latency (ms, log)")
    axis.set_title(f"{result.model}: p99 vs throughput")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_server_time(result: SweepResult, path: Path) -> None:
    """(c) where a request's time goes per level: batching queue, batch compute, and the
    rest of the client-observed mean (HTTP, decode/encode, client scheduling)."""
    levels = result.levels
    labels = [level.label() for level in levels]
    queue = [level.server["queue_ms"] or 0.0 for level in levels]
    compute = [level.server["compute_ms"] or 0.0 for level in levels]
    rest = [max(0.0, (level.latency_ms["mean"] or 0.0) - q - c) for level, q, c in zip(levels, queue, compute)]
    fig, axis = plt.subplots(figsize=(max(7, 0.7 * len(levels)), 4.5), constrained_layout=True)
    axis.bar(labels, queue, label="server queue (enqueue -> batch start)", color="tab:orange")
    axis.bar(labels, compute, bottom=queue, label="server compute (batch run)", color="tab:blue")
    axis.bar(labels, rest, bottom=[q + c for q, c in zip(queue, compute)], color="lightgray",
             label="rest of client-observed mean")
    for index, level in enumerate(levels):
        if level.server["batch_size"]:
            top = queue[index] + compute[index] + rest[index]
            axis.annotate(f"b={level.server['batch_size']:.1f}", (index, top), ha="center",
                          textcoords="offset points", xytext=(0, 3), fontsize=8)
    axis.set_ylabel("mean time per request (ms)")
    axis.set_title(f"{result.model}: server time per request (b = mean batch size)")
    axis.tick_params(axis="x", rotation=45)
    axis.legend(fontsize=8)
    axis.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def findings(result: SweepResult) -> list[str]:
    lines = []
    closed, opened = result.of_mode(CLOSED), result.of_mode(OPEN)
    if closed:
        best = max(closed, key=lambda level: level.throughput_rps)
        lines.append(f"Peak closed-loop throughput: **{best.throughput_rps:.1f} req/s** at concurrency "
                     f"{best.level:g} (p99 {_fmt(best.latency_ms['p99'])} ms, mean batch "
                     f"{_fmt(best.server['batch_size'], 2)}).")
    if result.slo_p99_ms is not None:
        for mode, levels in ((CLOSED, closed), (OPEN, opened)):
            passing = [level for level in levels if meets_slo(level, result.slo_p99_ms)]
            if passing:
                best = max(passing, key=lambda level: level.throughput_rps)
                lines.append(f"Best {mode}-loop level within the SLO (p99 ≤ {result.slo_p99_ms:g} ms, no errors): "
                             f"{best.label()} → {best.throughput_rps:.1f} req/s, p99 {_fmt(best.latency_ms['p99'])} ms.")
            elif levels:
                lines.append(f"No {mode}-loop level met the SLO (p99 ≤ {result.slo_p99_ms:g} ms, no errors).")
    bound = [level.label() for level in result.levels if level.client_cpu_util >= CLIENT_BOUND_CPU]
    if bound:
        lines.append(f"The load generator used ≥{CLIENT_BOUND_CPU:.0%} of a core at {', '.join(bound)}: "
                     "there the client may limit throughput, not the server.")
    thin = [level for level in result.levels if 0 < level.ok < MIN_SAMPLES_FOR_P99]
    if thin:
        lines.append(f"{len(thin)} of {len(result.levels)} levels have fewer than {MIN_SAMPLES_FOR_P99} answers "
                     "(p99 there is about the maximum): lengthen --duration for a steadier tail.")
    lagging = [level.label() for level in opened if (level.max_send_lag_ms or 0) > 50]
    if lagging:
        lines.append(f"Open-loop sends ran late (>50 ms behind schedule) at {', '.join(lagging)}; "
                     "their latencies include that lateness, by design.")
    return lines


def markdown(result: SweepResult) -> str:
    model = result.server_model
    lines = [
        f"# Load test: {result.model}",
        "",
        f"- Server: `{result.url}`, backend {model.get('backend', '?')} on {model.get('device', '?')}, "
        f"input {model.get('input', {}).get('height', '?')}x{model.get('input', {}).get('width', '?')}, "
        f"batches of up to {model.get('batch_size', model.get('max_batch_size', '?'))} (max_batch_size "
        f"{model.get('max_batch_size', '?')}), max queue delay {model.get('max_queue_delay_ms', '?')} ms, "
        f"weights {model.get('weights', {}).get('source', '?')}",
        f"- Payload: {result.payload['name']} ({result.payload['content_type']}, {result.payload['bytes']} bytes)",
        f"- {result.duration_s:g} s per level, started {result.started_at}; load generator host: "
        f"{result.host.get('cpu_count', '?')} CPUs, 1-min load {result.host.get('loadavg_1m_at_start', '?')} at start "
        "(client and server share it)",
        "- Closed loop: N workers each send the next request when the previous answers (latency from send). "
        "Open loop: requests leave on a fixed schedule (latency from the *intended* send time, so queueing "
        "behind a slow server is not hidden: no coordinated omission). Latency percentiles over HTTP 200 "
        "answers, from an HDR histogram; server columns are /metrics deltas per level.",
        "",
        "## Findings",
        "",
        *[f"- {line}" for line in findings(result)],
        "",
        "## Plots",
        "",
        *([f"![throughput and latency vs concurrency]({THROUGHPUT_PNG})", ""] if result.of_mode(CLOSED) else []),
        f"![p99 vs throughput]({P99_PNG})",
        "",
        f"![server queue vs compute time]({SERVER_TIME_PNG})",
        "",
        "## Levels",
        "",
        "| mode | level | req/s | p50 ms | p95 ms | p99 ms | p99.9 ms | errors | queue ms | compute ms | batch | client CPU | SLO |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in result.levels:
        lat, server = level.latency_ms, level.server
        verdict = {True: "✅", False: "❌", None: "–"}[meets_slo(level, result.slo_p99_ms)]
        lines.append(
            f"| {level.mode} | {level.label()} | {level.throughput_rps:.1f} | {_fmt(lat['p50'])} | {_fmt(lat['p95'])} "
            f"| {_fmt(lat['p99'])} | {_fmt(lat['p99.9'])} | {level.errors}/{level.requests} | {_fmt(server['queue_ms'])} "
            f"| {_fmt(server['compute_ms'])} | {_fmt(server['batch_size'], 2)} | {level.client_cpu_util:.0%} | {verdict} |"
        )
    lines += ["", f"Data: [{CSV_FILE}]({CSV_FILE}), [{JSON_FILE}]({JSON_FILE}) (with per-level HDR histograms).", ""]
    return "\n".join(lines)


def write_all(result: SweepResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_FILE).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    write_csv(result, out / CSV_FILE)
    if result.of_mode(CLOSED):
        plot_throughput_latency(result, out / THROUGHPUT_PNG)
    plot_p99_vs_throughput(result, out / P99_PNG)
    plot_server_time(result, out / SERVER_TIME_PNG)
    (out / MARKDOWN_FILE).write_text(markdown(result))
    return sorted(path for path in out.iterdir() if path.name in
                  {JSON_FILE, CSV_FILE, THROUGHPUT_PNG, P99_PNG, SERVER_TIME_PNG, MARKDOWN_FILE})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m segserve_loadtest.report SWEEP_DIR")
    directory = Path(sys.argv[1])
    sweep = SweepResult.from_dict(json.loads((directory / JSON_FILE).read_text()))
    print("\n".join(str(path) for path in write_all(sweep, directory)))
