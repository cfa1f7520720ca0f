"""The load-test tools against a real segserve (subprocess on a free port, the session's
random-weights LRASPP exported at 128x128 so that it loads and answers quickly on a small CPU).

Real process, and why: every test here. ab and locust are other processes speaking HTTP to a
socket, and the sweep runner starts its own server (segserve_loadtest.server, what `make
loadtest` uses).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segserve_loadtest import report
from segserve_loadtest.ab import run_ab, segment_url
from segserve_loadtest.locust_csv import aggregated, read_failures, read_stats
from segserve_loadtest.payloads import default_images
from segserve_loadtest.run import main as run_main
from tests.conftest import SEMANTIC

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = SEMANTIC


@pytest.fixture(scope="module")
def model_repository(semantic_repo) -> Path:
    return semantic_repo


@pytest.fixture(scope="module")
def server(process_server):
    """The session's `segserve serve` process (tests/conftest.py) on the same repository."""
    return process_server


def locust(host: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtest" / "locustfile.py"), "--headless",
               "--host", host, "--model", MODEL, "--csv", str(out / "locust"), "--only-summary", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) not installed")
def test_ab_wrapper(server):
    result = run_ab(segment_url(server.url, MODEL), default_images()[0], requests=200, concurrency=8, time_limit_s=60)
    assert result["complete_requests"] == 200
    assert result["failed_requests"] == 0
    assert result["non_2xx_responses"] == 0
    assert result["document_length"] == "variable"
    assert result["requests_per_second"] > 0
    assert set(result["percentiles_ms"]) >= {50, 90, 99, 100}


def test_locust_headless_with_generous_slo_passes(server, tmp_path):
    # Video weight 1: the video task runs when the server has the route and is skipped,
    # not failed, when it answers 404.
    proc = locust(server.url, tmp_path, "-u", "8", "-r", "8", "-t", "10s", "--video-weight", "1",
                  "--slo-p99-ms", "60000", "--slo-error-ratio", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = read_stats(tmp_path / "locust_stats.csv")
    total = aggregated(stats)
    assert total.requests > 0
    assert total.failures == 0
    assert read_failures(tmp_path / "locust_failures.csv") == []
    assert list(total.percentiles_ms) == ["50%", "90%", "95%", "99%", "99.9%", "100%"]
    names = {row.name for row in stats}
    assert "/segment [semantic]" in names
    assert ("video task skipped" in proc.stderr) != ("/segment/video" in names)
    assert "SLO passed" in proc.stderr


def test_locust_impossible_slo_exits_non_zero(server, tmp_path):
    # long enough for a request to complete on a loaded machine (with none, the verdict is "no requests")
    proc = locust(server.url, tmp_path, "-u", "2", "-r", "2", "-t", "6s", "--slo-p99-ms", "0.001")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "SLO violated: p99" in proc.stderr
    assert aggregated(read_stats(tmp_path / "locust_stats.csv")).failures == 0


def test_sweep_via_runner_starts_its_own_server(model_repository, tmp_path):
    out = tmp_path / "sweep"
    code = run_main(["--model-repository", str(model_repository), "--out", str(out), "--model", MODEL,
                     "--levels", "1,4", "--duration", "3", "--open-loop-rates", "15", "--slo-p99-ms", "2000"])
    assert code == 0
    for name in (report.CSV_FILE, report.JSON_FILE, report.MARKDOWN_FILE,
                 report.THROUGHPUT_PNG, report.P99_PNG, report.SERVER_TIME_PNG):
        assert (out / name).stat().st_size > 0, name
    for png in (report.THROUGHPUT_PNG, report.P99_PNG, report.SERVER_TIME_PNG):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
        assert f"({png})" in (out / report.MARKDOWN_FILE).read_text()

    levels = json.loads((out / report.JSON_FILE).read_text())["levels"]
    assert [(level["mode"], level["level"]) for level in levels] == [("closed", 1), ("closed", 4), ("open", 15)]
    for level in levels:
        assert level["ok"] > 0 and level["errors"] == 0
        assert level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
        server = level["server"]
        # every request the client counted, the server counted too (same model, fresh server)
        assert server["requests_by_status"] == {"200": level["ok"]}
        assert server["queue_ms"] is not None and server["compute_ms"] > 0 and server["batch_size"] >= 1
    open_level = levels[2]
    assert open_level["offered_rps"] == pytest.approx(15, rel=0.2)
    assert len((out / report.CSV_FILE).read_text().strip().splitlines()) == 1 + len(levels)


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) not installed")
def test_tune_measures_configurations_and_writes_the_best(semantic_repo, tmp_path):
    from segserve.cli import main as segserve
    from segserve.contract.model_config import load_config
    from tests.conftest import copy_model

    repo = tmp_path / "repo"
    copy_model(semantic_repo, repo, max_batch_size=8, dynamic_batching__preferred_batch_size=8, instances=1)
    config_file = repo / MODEL / "config.yaml"
    # the shipped placement and delay, two batch sizes: the shipped configuration and one other
    args = ["tune", MODEL, "--repository", str(repo), "--seconds", "1", "--concurrency", "4",
            "--placements", "1x0", "--batch", "1,8", "--delay-ms", "0", "--confirm", "1", "--out", str(tmp_path / "out")]
    before = config_file.read_text()
    assert segserve(args + ["--dry-run"]) == 0
    assert config_file.read_text() == before
    result = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert [t["candidate"]["batch_size"] for t in result["trials"]] == [8, 1]  # shipped first, each once
    assert all(t["requests_per_s"] > 0 and t["p99_ms"] and t["failed"] == 0 for t in result["trials"])
    assert (tmp_path / "out" / "tune.png").stat().st_size > 1000
    # a pick other than the shipped configuration was measured against it once more, shipped first
    expected = [] if result["search_best"] == result["shipped"] else [result["shipped"], result["search_best"]]
    assert [t["candidate"] for t in result["confirmation"]] == expected
    assert result["best"] in (result["shipped"], result["search_best"])

    assert segserve(args) == 0
    best = json.loads((tmp_path / "out" / "tune.json").read_text())["best"]
    tuned = load_config(repo / MODEL)
    # the batches it forms, not what the model accepts
    assert (tuned.batch_size, tuned.max_batch_size, tuned.instances) == (best["batch_size"], 8, best["instances"])


def test_tune_keeps_the_fastest_configuration_that_meets_the_latency_target():
    from segserve_loadtest.tune import Candidate, Trial, best_of, placements

    fast = Trial(Candidate(1, 2, 8, 4), 120.0, 200.0, 400.0, 0)
    quick = Trial(Candidate(1, 2, 2, 4), 90.0, 50.0, 90.0, 0)
    failing = Trial(Candidate(2, 1, 8, 4), 150.0, 20.0, 40.0, 3)
    assert best_of([fast, quick, failing], None) is fast
    assert best_of([fast, quick, failing], 100.0) is quick
    assert best_of([fast, quick, failing], 10.0) is None
    assert placements(2) == [(1, 2), (2, 1)] and placements(8) == [(1, 8), (2, 4), (3, 2), (4, 2)]


def test_tune_measures_the_shipped_configuration_as_shipped(semantic_repo):
    from segserve.contract.model_config import load_config
    from segserve_loadtest.tune import Candidate

    config = load_config(semantic_repo / MODEL)
    # an ONNX Runtime model whose torch side (a Mask R-CNN's heads) has threads of its own
    config = config.model_copy(update={"torch": config.torch.model_copy(update={"threads": 1})})
    assert Candidate.of(config).apply(config) == config
    tuned = Candidate(1, 2, 4, 2.0).apply(config)
    assert (tuned.instances, tuned.onnxruntime.intra_op_threads, tuned.torch.threads) == (1, 2, 1)
    assert (tuned.batch_size, tuned.dynamic_batching.preferred_batch_size, tuned.max_batch_size) == (4, 4, config.max_batch_size)
    assert tuned.dynamic_batching.max_queue_delay_ms == 2.0


def test_tune_keeps_its_pick_only_if_it_wins_the_interleaved_confirmation():
    from segserve_loadtest.tune import Candidate, Trial, confirmed

    shipped, pick = Candidate(2, 0, 8, 4), Candidate(2, 0, 1, 2)

    def rounds(pick_rps: list[float], pick_p99: float = 900.0, shipped_p99: float = 1000.0, pick_failed: int = 0) -> list[Trial]:
        out = []
        for rps in pick_rps:
            out += [Trial(shipped, 20.0, 500.0, shipped_p99, 0), Trial(pick, rps, 400.0, pick_p99, pick_failed)]
        return out

    assert confirmed(rounds([25.0, 19.0, 24.0]), shipped, pick, None) == pick  # median 24 > 20, p99 better
    assert confirmed(rounds([30.0, 18.0, 19.0]), shipped, pick, None) == shipped  # one lucky round is not enough
    assert confirmed(rounds([25.0, 25.0, 25.0], pick_p99=1100.0), shipped, pick, None) == shipped  # faster, p99 worse
    assert confirmed(rounds([25.0, 25.0, 25.0], pick_failed=1), shipped, pick, None) == shipped  # failures disqualify
    # with a target: the pick meets it in every round and the shipped one misses it
    assert confirmed(rounds([15.0, 15.0, 15.0], pick_p99=900.0, shipped_p99=1500.0), shipped, pick, 1000.0) == pick


def test_overload_closed_loop_sees_the_refusals_apart_from_the_answers(semantic_repo, tmp_path):
    """loadtest/overload.py's closed loop against a real server whose model holds 1 + 1 x 2
    requests: 32 connections back to back get 200s and immediate 503s, each status with its own
    latencies, every 503 with Retry-After and nothing lost; Little's law holds for the refusals."""
    import asyncio

    from segserve_loadtest.overload import closed_loop, in_flight_limit, little
    from tests.conftest import copy_model
    from tests.servers import ServerProcess

    repo = tmp_path / "repo"
    copy_model(semantic_repo, repo, "tight", instances=1, max_batch_size=8, dynamic_batching__preferred_batch_size=2,
               dynamic_batching__max_queue_size=1)
    with ServerProcess(repo, tmp_path / "server.log") as server:
        result = asyncio.run(closed_loop(segment_url(server.url, "tight"), 32, 3.0, default_images()[0]))
    ok, refused = result["by_status"]["200"], result["by_status"]["503"]
    assert result["problems"] == {} and set(result["by_status"]) == {"200", "503"}
    assert ok["count"] > 0 and refused["count"] > 10 * ok["count"]
    assert refused["p50_ms"] < ok["p50_ms"]
    limit = in_flight_limit(repo, "tight")
    assert limit == 1 + 1 * 2
    arithmetic = little(result, 32, limit, server_cpu_s=1.0, cpu_ms_per_200=1.0, seconds=3.0, cores=2)
    assert arithmetic["connections_cycling_refusals"] == 29
    # N = R x L, within the measurement's edges (connections busy with a 200 for part of the window)
    assert arithmetic["little_mean_ms"] == pytest.approx(refused["mean_ms"], rel=0.35)
