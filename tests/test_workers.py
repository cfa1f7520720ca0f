"""`segserve serve --workers 2`: one engine process, two HTTP worker processes (segserve.supervisor,
segserve.scheduler.remote), as real processes on a real socket, serving the bundled LRASPP on
ONNX Runtime. The API answers as the single process does; overload, deadlines, a killed worker,
SIGTERM and /metrics hold across the processes.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from segserve_models.export import export_model
from segserve_models.video_split import export_video_split
from segserve_models.weights import WeightsSpec
from tests.conftest import SEMANTIC, SMALL_INPUT, copy_model, make_image
from tests.kserve_clients import without_timing as json_without_timing
from tests.servers import InProcessServer, ServerProcess
from tests.test_api import raw_post, read_answer
from tests.test_grpc import infer, masks_json
from tests.test_video import encode, frames

MODEL = "shapes_lraspp"
# Batches of 8, one instance, a queue of one, no batching window: beyond the batch running and
# one request queued, the engine process refuses (its QueueFull; each worker would admit 9).
TIGHT = "tight"
# A batching window of 2 s: a lone request waits in it (for deadlines, and a drain under way).
WINDOWED = "windowed"
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The bundled LRASPP (trained weights: real masks), exported at a small input with its video
    split, and two copies (without the split) with tighter batching."""
    repo = tmp_path_factory.mktemp("workers_repo")
    export_model(SEMANTIC, repo, WeightsSpec.parse("bundled:shapes_lraspp"), name=MODEL, input_size=SMALL_INPUT, progress=False)
    copy_model(repo, repo, TIGHT, source=MODEL, instances=1, max_batch_size=8, dynamic_batching__preferred_batch_size=8,
               dynamic_batching__max_queue_size=1,
               dynamic_batching__max_queue_delay_ms=0, onnxruntime__intra_op_threads=1)
    copy_model(repo, repo, WINDOWED, source=MODEL, instances=1, max_batch_size=8, dynamic_batching__preferred_batch_size=8,
               dynamic_batching__max_queue_delay_ms=2000)
    export_video_split(repo, MODEL)
    return repo


@pytest.fixture(scope="module")
def workers(repo, tmp_path_factory):
    with ServerProcess(repo, tmp_path_factory.mktemp("logs") / "workers.log", args=["--workers", "2"], grpc=True) as server:
        yield server


def worker_pids(server: ServerProcess) -> list[int]:
    """The server's worker processes (multiprocessing's spawned children; not its resource tracker)."""
    pid = server.process.pid
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def segment(server: ServerProcess, data: bytes, **params) -> httpx.Response:
    """One POST /segment on a connection of its own (the kernel picks the worker that takes it)."""
    return httpx.post(f"{server.url}/segment", content=data, params=params, headers=JPEG, timeout=60)


def without_timing(body: dict) -> dict:
    return {key: value for key, value in body.items() if key != "timing_ms"}


def test_two_workers_answer_as_one_process_does(repo, workers):
    assert len(worker_pids(workers)) == 2
    images = [make_image(480, 640, seed=1), make_image(37, 501, "PNG", seed=2)]
    with InProcessServer(repo, models=[MODEL]) as single:
        expected = [single.client.post("/segment", content=data, params={"model": MODEL}, headers=JPEG, timeout=60) for data in images]
        expected_png = single.client.post("/segment", content=images[0], params={"model": MODEL, "format": "png"}, headers=JPEG,
                                          timeout=60)
        expected_models = single.client.get("/v1/models").json()
    for data, reference in zip(images, expected):
        assert reference.status_code == 200 and reference.json()["segments"], reference.text
        answers = [segment(workers, data, model=MODEL) for _ in range(4)]  # on fresh connections: both workers
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert without_timing(answer.json()) == without_timing(reference.json())
    png = segment(workers, images[0], model=MODEL, format="png")
    assert png.status_code == 200 and png.content == expected_png.content
    served = {m["name"]: m for m in workers.client.get("/v1/models").json()["models"]}[MODEL]
    reference = {m["name"]: m for m in expected_models["models"]}[MODEL]
    # each server measured its own batch size at load (preferred_batch_size: auto); the rest is the
    # engine and state, from the engine process
    assert served.pop("batch_size") in (1, 2, 4, 8) and reference.pop("batch_size") in (1, 2, 4, 8)
    assert served == reference


def test_a_video_stream_on_one_connection_keeps_its_state_in_its_worker(repo, workers):
    """The split parts' batchers are the engine's; the stream's keyframe state is the worker's that
    holds the connection: chunk 1 goes on from chunk 0's keyframe, as in one process."""
    chunks = [encode(frames(6, seed=1)), encode(frames(6, seed=1)[3:] + frames(3, seed=2))]
    params = {"model": MODEL, "stream_id": "s1", "keyframe_interval": 100}

    def run(client: httpx.Client) -> list[dict]:
        answers = [client.post("/segment/video", content=chunk, params={**params, "sequence": i},
                               headers={"Content-Type": "video/mp4"}, timeout=60) for i, chunk in enumerate(chunks)]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [without_timing(a.json()) for a in answers]

    with InProcessServer(repo, models=[MODEL]) as single:
        expected = run(single.client)
    with httpx.Client(base_url=workers.url) as one_connection:
        served = run(one_connection)
    assert served == expected
    assert served[0]["keyframe_policy"]["split"] and not served[1]["stream_restarted"]
    assert [f["keyframe"] for f in served[1]["frames"]] == [False] * 6


def test_grpc_is_served_by_the_engine_process_with_the_http_answer(workers):
    data = make_image(120, 160, seed=7)
    with triton.InferenceServerClient(workers.grpc_url) as client:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        (answer,) = masks_json(infer(client, data, model=MODEL))
    assert json_without_timing(answer) == json_without_timing(segment(workers, data, model=MODEL).content)


def test_a_full_engine_queue_is_a_503_with_retry_after_in_the_worker(workers):
    data = make_image(480, 640, seed=3)
    refused = []
    with ThreadPoolExecutor(24) as pool:
        for _ in range(5):  # bursts until the engine's queue overflows (in the first, as a rule)
            answers = list(pool.map(lambda _: segment(workers, data, model=TIGHT), range(24)))
            assert {a.status_code for a in answers} <= {200, 503}, [a.text for a in answers if a.status_code not in (200, 503)]
            refused += [a for a in answers if a.status_code == 503]
            engine_refusals = [a for a in refused if "queue full (1)" in a.json()["error"]["message"]]
            if engine_refusals:
                break
    assert engine_refusals, [a.text for a in refused]
    for answer in engine_refusals:
        assert answer.json()["error"]["code"] == "queue_full" and int(answer.headers["retry-after"]) >= 1


def test_a_deadline_that_passes_in_the_engine_queue_is_a_504_at_the_deadline(workers):
    started = time.monotonic()
    answer = segment(workers, make_image(64, 64), model=WINDOWED, timeout_ms=400)
    elapsed = time.monotonic() - started
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "deadline_exceeded", answer.text
    assert elapsed < 1.5  # at the deadline, not at the end of the 2 s window
    assert segment(workers, make_image(64, 64), model=WINDOWED).status_code == 200


def scraped_requests(server: ServerProcess, model: str) -> float:
    text = server.client.get("/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "segserve_requests_total"
               and sample.labels == {"model": model, "route": "segment", "status": "200"})


def test_metrics_count_the_requests_of_every_worker(workers):
    """Each worker in turn serves alone (the other stopped: it accepts nothing); one scrape, from
    either, counts both's requests."""
    data = make_image(64, 64, seed=5)
    before = scraped_requests(workers, MODEL)
    for alone in worker_pids(workers):
        others = [pid for pid in worker_pids(workers) if pid != alone]
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                assert segment(workers, data, model=MODEL).status_code == 200
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)
    assert scraped_requests(workers, MODEL) == before + 6


def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(workers):
    victim, survivor = worker_pids(workers)
    served_before = scraped_requests(workers, MODEL)
    os.kill(victim, signal.SIGKILL)
    data = make_image(64, 64, seed=6)
    answered = 0
    deadline = time.monotonic() + 60
    while victim in worker_pids(workers) or len(worker_pids(workers)) < 2:
        assert time.monotonic() < deadline, workers.log_tail()
        assert segment(workers, data, model=MODEL).status_code == 200  # the survivor serves meanwhile
        answered += 1
    replacement = next(pid for pid in worker_pids(workers) if pid != survivor)
    assert f"(pid {victim}) exited with -9" in workers.log()
    until(lambda: workers.log().count("Application startup complete") >= 3, 120, "the replacement never started")
    for _ in range(4):
        assert segment(workers, data, model=MODEL).status_code == 200
    assert sorted(worker_pids(workers)) == sorted([survivor, replacement])
    assert scraped_requests(workers, MODEL) == served_before + answered + 4  # the dead worker's count stays counted


def test_sigterm_drains_every_worker_then_the_engine(repo, tmp_path):
    """Requests sent before SIGTERM, taken by either worker, wait in the engine's one batching
    window: they form one batch across the workers, and all are answered before the exit."""
    env = {"SEGSERVE_SHUTDOWN_DELAY_S": "0.5"}  # readiness off first; what is in the backlog is still taken
    with ServerProcess(repo, tmp_path / "server.log", args=["--workers", "2"], env=env) as server:
        data = make_image(120, 160, seed=4)
        sockets = [raw_post(server.port, data, model=WINDOWED) for _ in range(8)]
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        answers = [read_answer(sock) for sock in sockets]
        assert server.process.wait(timeout=60) == 0  # on its own: a second SIGTERM would stop the workers at once
    assert time.monotonic() - signalled < 30
    for status, headers, body in answers:
        assert status.startswith(b"HTTP/1.1 200"), (status, body)
        assert headers[b"x-batch-size"] == b"8"  # one batch of the two workers' requests
    log = server.log()
    assert "stopping 2 workers" in log and "workers stopped (exit codes" in log and "0 killed" in log
    assert "draining batchers" in log and "every model's batchers drained" in log
