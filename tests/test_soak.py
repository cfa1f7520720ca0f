"""The soak harness (loadtest/soak.py, `make soak`) in miniature: its HTTP/1.1 client and open
loop against a real `segserve serve` for a few seconds, and the arithmetic of its checks."""

from __future__ import annotations

import argparse
import asyncio
import time

from segserve_loadtest.ab import segment_url
from segserve_loadtest.payloads import Payload
from segserve_loadtest.server_metrics import scrape
from segserve_loadtest.soak import Outcomes, analyse, build_parser, per_window, rss_growth, server_requests, soak_loop
from tests.conftest import SEMANTIC, make_image


def test_a_short_open_loop_gets_every_answer_and_the_server_counts_them(process_server):
    payload = Payload("small.jpg", "image/jpeg", make_image(48, 64))
    url = segment_url(process_server.url, SEMANTIC)
    before = scrape(process_server.client, process_server.url)
    out, client = asyncio.run(soak_loop(url, payload, rate_rps=15, duration_s=2, timeout_s=30, origin=time.perf_counter()))
    counted = server_requests(before, scrape(process_server.client, process_server.url))
    assert client["requests"] == len(out.status) == 30 and client["unanswered_after_drain"] == 0
    assert set(out.status) == {200} and all(latency > 0 for latency in out.latency_s)
    assert counted == {"200": 30}
    assert client["connections_opened"] <= 30  # kept-alive connections are reused


def test_unknown_model_answers_are_counted_not_lost(process_server):
    payload = Payload("small.jpg", "image/jpeg", make_image(16, 16))
    out, _ = asyncio.run(soak_loop(segment_url(process_server.url, "nope"), payload, 20, 0.5, 30, time.perf_counter()))
    assert set(out.status) == {404} and not any(out.error)


def outcomes(rows: list[tuple[float, float | None, int | None, bool | None, str | None]]) -> Outcomes:
    out = Outcomes()
    for sent, latency, status, retry_after, error in rows:
        out.sent_at.append(sent)
        out.add()
        out.latency_s[-1], out.status[-1], out.retry_after_ok[-1], out.error[-1] = latency, status, retry_after, error
    return out


def args(**overrides) -> argparse.Namespace:
    return build_parser().parse_args([f"--{k.replace('_', '-')}={v}" for k, v in {"duration": 10, **overrides}.items()])


def test_the_checks_fail_on_a_lost_request_a_503_without_retry_after_and_a_500():
    out = outcomes([(0.1, 0.5, 200, None, None), (0.2, 0.01, 503, True, None), (0.3, 0.01, 503, False, None),
                    (0.4, None, None, None, "ConnectionResetError"), (5.0, 0.2, 500, None, None)])
    samples = [(t, 100 * 2**20) for t in range(11)]
    result = analyse(out, {}, samples, {"200": 1, "503": 2, "500": 1}, args(), saturation_rps=1.0)
    checks = {name: c["ok"] for name, c in result["checks"].items()}
    assert result["lost"] == 1 and not checks["lost requests = 0"]
    assert not checks["every 503 has Retry-After"] and not checks["only 200 and 503"]
    assert checks["server counted every answer"] and checks["RSS growth < 5%"] and not result["passed"]
    assert result["transport_errors"] == {"ConnectionResetError": 1}


def test_rss_growth_compares_the_first_window_after_warm_up_with_the_last():
    # 600 s: warm-up 0-60 s, first window 60-120 s at 100 MB, last 540-600 s at 104 MB
    samples = [(float(t), (100 if t < 300 else 104) * 2**20) for t in range(0, 601, 2)]
    growth = rss_growth(samples, 600)
    assert growth["first_window_s"] == [60, 120] and growth["last_window_s"] == [540, 600]
    assert growth["growth"] == 0.04
    assert rss_growth([(0.0, 1)], 600)["growth"] is None


def test_per_window_rows():
    out = outcomes([(t / 10, 0.1, 200 if t % 2 else 503, True, None) for t in range(100)])
    rows = per_window(out, [(1.0, 2**20)], 10, 5)
    assert [(r["from_s"], r["sent_rps"], r["ok_rps"], r["shed_rps"]) for r in rows] == [(0, 10.0, 5.0, 5.0), (5, 10.0, 5.0, 5.0)]
    assert rows[0]["rss_mb"] == 1.0 and rows[1]["rss_mb"] is None
