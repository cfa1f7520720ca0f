"""preferred_batch_size: auto -- the choice of batch size (a fake clock and made-up rates), and
a real server measuring it on a real exported model at load."""

from __future__ import annotations

import logging

import pytest

from segserve.pipelines.batch_profile import PAST_PEAK, candidate_sizes, fastest_batch_size, images_per_s
from tests.conftest import copy_model, make_image
from tests.servers import app_server


def test_candidate_sizes_are_powers_of_two_then_the_largest():
    assert candidate_sizes(8) == [1, 2, 4, 8]
    assert candidate_sizes(6) == [1, 2, 4, 6]
    assert candidate_sizes(1) == [1]


def rates(table: dict[int, float]):
    asked: list[int] = []

    def measure(n: int) -> float:
        asked.append(n)
        return table[n]

    return measure, asked


def test_the_fastest_size_wins_and_a_near_tie_goes_to_the_smaller():
    measure, asked = rates({1: 195.0, 2: 197.0, 4: 224.0, 8: 195.0})
    assert fastest_batch_size(measure, 8)[0] == 4
    assert asked == [1, 2, 4, 8] * 2
    measure, _ = rates({1: 100.0, 2: 102.0, 4: 90.0, 8: 80.0})  # 2 is within TIE of 1
    assert fastest_batch_size(measure, 8)[0] == 1


def test_the_better_of_two_passes_counts():
    passes = iter([100.0, 50.0, 60.0, 120.0])  # 1, 2, then 1, 2 again: 2 was disturbed the first time
    best, measured = fastest_batch_size(lambda n: next(passes), 2)
    assert (best, measured) == (2, {1: 100.0, 2: 120.0})


def test_sizes_past_the_peak_are_not_timed():
    measure, asked = rates({1: 100.0, 2: 100.0 * PAST_PEAK - 1, 4: 1.0, 8: 1.0})
    best, measured = fastest_batch_size(measure, 8)
    assert (best, asked, list(measured)) == (1, [1, 2, 1, 2], [1, 2])  # the second pass times the same sizes


def test_a_single_size_is_not_measured():
    measure, asked = rates({})
    assert fastest_batch_size(measure, 1) == (1, {})
    assert asked == []


def test_images_per_s_runs_batches_until_the_window_closes():
    now = [0.0]
    calls = []

    def run(instance: int, n: int) -> None:
        calls.append((instance, n))
        now[0] += 0.1 * n  # 10 images/s whatever the batch

    assert images_per_s(run, 1, 4, window_s=1.0, clock=lambda: now[0]) == pytest.approx(10.0)
    assert calls == [(0, 4)] * 4  # one untimed, then 0.4, 0.8, 1.2 s: the window closed after the third


def test_a_server_measures_the_batch_size_at_load(semantic_repo, tmp_path, caplog):
    """As exported (auto): the size the server logs it measured is the one /v1/models shows and
    batches close at; without warm-up nothing is measured and batches close at max_batch_size."""
    repo = tmp_path / "repo"
    copy_model(semantic_repo, repo, max_batch_size=4, dynamic_batching__preferred_batch_size="auto")
    caplog.set_level(logging.INFO, logger="segserve.pipelines.batch_profile")
    with app_server(repo) as server:
        (info,) = server.client.get("/v1/models").json()["models"]
        log = server.log() if hasattr(server, "log") else caplog.text
        assert f"batches of {info['batch_size']} (preferred_batch_size: auto; images/s by batch size here: 1: " in log
        assert info["max_batch_size"] == 4 and info["batch_size"] in (1, 2, 4)
        r = server.client.post("/segment", content=make_image(120, 160, seed=3), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and int(r.headers["x-batch-size"]) <= info["batch_size"]
    with app_server(repo, warmup=False) as server:
        (info,) = server.client.get("/v1/models").json()["models"]
        assert info["batch_size"] == 4
