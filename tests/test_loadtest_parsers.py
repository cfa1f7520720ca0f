"""The ab and locust CSV parsers on real captured output (tests/data/ab_*, tests/data/locust_*).

How the captures were made (ab 2.3, locust 2.47, segserve with a random-weights
lraspp_mobilenet_v3_large exported at 128x128, body = loadtest.payloads' 640x480 JPEG):
  ab_segserve_200.txt                   ab -n 200 -c 8 -k -l -p img.jpg -T image/jpeg '<segserve>/segment?model=lraspp_mobilenet_v3_large'
  ab_segserve_no_l_length_failures.txt  ab -n 100 -c 4 -k -p img.jpg ... (same URL, no -l: length "failures")
  ab_segserve_unknown_model_404.txt     ab -n 100 -c 4 -k -l -p img.jpg ... '<segserve>/segment?model=nope'
  ab_http_server_404.txt                ab -n 200 -c 4 -k -l http://127.0.0.1:18765/missing   (python -m http.server)
  ab_http_server_post_501.txt           ab -n 100 -c 2 -k -l -p body.bin -T image/jpeg <http.server>/segment
  locust_ok_*.csv                       locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 6s --csv ...
  locust_unknown_model_*.csv            the same with --model nope -u 2 -t 3s
  pyspy_gil_workers2.txt                py-spy 0.4.3 record --pid PID --duration 2 --rate 100 --format raw --gil --subprocesses
                                        on `segserve serve --workers 2` (bundled shapes_lraspp) under ab -c 8 -k -l
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segserve_loadtest.ab import AbError, ab_command, parse_ab_output, segment_url
from segserve_loadtest.locust_csv import aggregated, read_failures, read_stats
from segserve_loadtest.slo import Slo, evaluate

DATA = Path(__file__).parent / "data"
AB_PERCENTS = [50, 66, 75, 80, 90, 95, 98, 99, 100]


def ab_capture(name: str) -> dict:
    return parse_ab_output((DATA / name).read_text())


def test_ab_successful_run_against_segserve():
    report = ab_capture("ab_segserve_200.txt")
    assert report["server_software"] == "uvicorn"
    assert report["document_path"] == "/segment?model=lraspp_mobilenet_v3_large"
    assert report["document_length"] == "variable"  # -l
    assert report["concurrency"] == 8
    assert report["complete_requests"] == 200
    assert report["failed_requests"] == 0
    assert report["non_2xx_responses"] == 0  # no such line when zero
    assert report["write_errors"] == 0
    # uvicorn answers ab's HTTP/1.0 requests with "connection: close", so -k reuses nothing.
    assert report["keep_alive_requests"] == 0
    assert report["requests_per_second"] == pytest.approx(97.57)
    assert report["time_per_request_ms"] == pytest.approx(81.988)
    assert report["time_per_request_across_ms"] == pytest.approx(10.249)
    assert report["time_taken_s"] == pytest.approx(2.050)
    assert report["total_body_sent_bytes"] == 6912200
    assert report["transfer_rate_kb_s_received"] == pytest.approx(62.47)
    assert report["transfer_rate_kb_s_sent"] == pytest.approx(3293.25)
    assert report["transfer_rate_kb_s_total"] == pytest.approx(3355.72)
    assert report["connection_times_ms"]["total"] == {"min": 21, "mean": 81, "sd": 10.9, "median": 81, "max": 112}
    assert list(report["percentiles_ms"]) == AB_PERCENTS
    assert report["percentiles_ms"][99] == 110 and report["percentiles_ms"][100] == 112


def test_ab_without_dash_l_counts_varying_json_lengths_as_failures():
    report = ab_capture("ab_segserve_no_l_length_failures.txt")
    assert report["document_length"] == 444  # the first response's length, taken as the norm
    assert report["failed_requests"] == 84
    assert report["failed_breakdown"] == {"connect": 0, "receive": 0, "length": 84, "exceptions": 0}
    assert report["non_2xx_responses"] == 0


@pytest.mark.parametrize("capture, requests", [
    ("ab_segserve_unknown_model_404.txt", 100),
    ("ab_http_server_404.txt", 200),
    ("ab_http_server_post_501.txt", 100),
])
def test_ab_http_errors_are_non_2xx_not_failed(capture, requests):
    report = ab_capture(capture)
    assert report["complete_requests"] == requests
    assert report["failed_requests"] == 0
    assert report["non_2xx_responses"] == requests
    assert list(report["percentiles_ms"]) == AB_PERCENTS


def test_ab_get_report_has_no_sent_figures():
    report = ab_capture("ab_http_server_404.txt")
    assert report["server_software"] == "SimpleHTTP/0.6"
    assert "total_body_sent_bytes" not in report and "transfer_rate_kb_s_sent" not in report
    post = ab_capture("ab_http_server_post_501.txt")
    assert post["total_body_sent_bytes"] == 316300


def test_ab_parser_rejects_text_that_is_not_a_report():
    with pytest.raises(AbError):
        parse_ab_output("apr_socket_recv: Connection refused (111)\n")


def test_segment_url_adds_route_and_model():
    assert segment_url("http://127.0.0.1:8000", "m") == "http://127.0.0.1:8000/segment?model=m"
    assert segment_url("http://127.0.0.1:8000/", None) == "http://127.0.0.1:8000/segment"
    assert segment_url("http://h:1/segment?format=png", "m") == "http://h:1/segment?format=png&model=m"


def test_ab_command_bounds_time_and_count_and_allows_variable_lengths(tmp_path):
    command = ab_command("http://h:1/segment", 500, 16, tmp_path / "body.jpg", "image/jpeg", time_limit_s=60)
    assert command[1:5] == ["-t", "60", "-n", "500"]  # -t first, or its implied -n 50000 wins
    assert "-l" in command and "-k" in command
    assert command[-5:] == ["-p", str(tmp_path / "body.jpg"), "-T", "image/jpeg", "http://h:1/segment"]


def test_locust_stats_of_a_clean_run():
    stats = read_stats(DATA / "locust_ok_stats.csv")
    assert [row.name for row in stats] == ["/segment [semantic]", "Aggregated"]
    total = aggregated(stats)
    assert total.method == "" and total.requests == 495 and total.failures == 0
    assert total.error_ratio == 0.0
    # the locustfile's percentile set: p50 p90 p95 p99 p99.9 and max
    assert list(total.percentiles_ms) == ["50%", "90%", "95%", "99%", "99.9%", "100%"]
    assert total.percentiles_ms["99%"] == 73
    assert total.requests_per_s == pytest.approx(99.2357, rel=1e-4)
    assert total.min_ms <= total.median_ms <= total.max_ms
    assert read_failures(DATA / "locust_ok_failures.csv") == []


def test_locust_stats_and_failures_of_a_failing_run():
    total = aggregated(read_stats(DATA / "locust_unknown_model_stats.csv"))
    assert total.requests == total.failures == 1995
    assert total.error_ratio == 1.0
    (failure,) = read_failures(DATA / "locust_unknown_model_failures.csv")
    assert failure.method == "POST" and failure.name == "/segment [semantic]"
    assert failure.occurrences == 1995
    assert "HTTP 404" in failure.error and "model_not_found" in failure.error


def test_slo_verdicts():
    slo = Slo(p99_ms=100, error_ratio=0.01)
    assert evaluate(slo, requests=1000, failures=10, p99_ms=100).passed
    assert evaluate(slo, requests=1000, failures=11, p99_ms=50).violations == ["error ratio 0.0110 > 0.01 (11/1000)"]
    assert evaluate(slo, requests=1000, failures=0, p99_ms=101).violations == ["p99 101 ms > 100 ms"]
    assert not evaluate(slo, requests=0, failures=0, p99_ms=None).passed
    assert evaluate(Slo(), requests=0, failures=0, p99_ms=None).passed  # no SLO, nothing to violate


def test_pyspy_gil_samples_are_split_by_process():
    """bench_overhead --profile: with --subprocesses every stack starts with its process chain;
    the engine process (the one started) and each HTTP worker get their own GIL share, and no
    holder is a process frame."""
    from segserve_loadtest.bench_overhead import summarise_gil

    gil = summarise_gil([DATA / "pyspy_gil_workers2.txt"], seconds=2, rate=100)
    assert "server" in gil["per_process"] and any(name.startswith("worker ") for name in gil["per_process"])
    assert sum(gil["per_process"].values()) == pytest.approx(gil["gil_share_of_wall"])
    assert not any(t["holder"].startswith("process ") for t in gil["top"] + gil["top_lines"])
