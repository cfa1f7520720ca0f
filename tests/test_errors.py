"""The error model: only domain errors are the client's (4xx); a failure inside a model is a
500 that carries the request id, logged once with its traceback, on HTTP and gRPC alike.

The failing model is a real ONNX graph dropped into a repository: its labels are negative,
which the mask encoder refuses with a ValueError (the kind of error the old route turned
into a 400)."""

from __future__ import annotations

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import make_image
from tests.servers import ServerProcess

BROKEN = "negative_labels"


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory):
    """uint8 images -> int64 labels = min over channels - 300: always negative."""
    repo = tmp_path_factory.mktemp("broken_repo")
    version = repo / BROKEN / "1"
    version.mkdir(parents=True)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["wide"], to=TensorProto.INT64),
            helper.make_node("ReduceMin", ["wide", "axes"], ["darkest"], keepdims=0),
            helper.make_node("Sub", ["darkest", "offset"], ["labels"]),
        ],
        "negative_labels",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, ["n", 32, 32])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), helper.make_tensor("offset", TensorProto.INT64, [], [300])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, version / "model.onnx")
    (repo / BROKEN / "config.yaml").write_text(
        f"name: {BROKEN}\nclasses: [background, thing]\nbackends: [onnxruntime]\ninput: {{height: 32, width: 32}}\n"
    )
    return repo


@pytest.fixture(scope="module")
def broken_server(broken_repo, tmp_path_factory):
    # a real process: the log line format with the request id is the CLI's
    with ServerProcess(broken_repo, tmp_path_factory.mktemp("logs") / "broken.log") as server:
        yield server


def test_an_error_inside_a_model_is_a_logged_500_with_the_request_id(broken_server):
    r = httpx.post(
        f"{broken_server.url}/segment",
        content=make_image(40, 50),
        headers={"Content-Type": "image/jpeg", "X-Request-ID": "broken-req-1"},
        timeout=60,
    )
    assert r.status_code == 500, r.text
    assert r.headers["x-request-id"] == "broken-req-1"
    error = r.json()["error"]
    assert error["code"] == "internal_error" and "broken-req-1" in error["message"]
    log = broken_server.log()
    failure = [line for line in log.splitlines() if "[broken-req-1]" in line and "ERROR" in line]
    assert failure, log[-3000:]  # logged, with the request id on the line
    assert log.count("Traceback") == 1 and "ValueError" in log  # once, with its traceback
    # the failure was the server's, the request well-formed: the next one is answered too
    assert httpx.get(f"{broken_server.url}/healthz", timeout=10).status_code == 200
    again = httpx.post(f"{broken_server.url}/segment", content=make_image(40, 50), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert again.status_code == 500 and again.headers["x-request-id"]
    metrics = httpx.get(f"{broken_server.url}/metrics", timeout=10).text
    assert f'segserve_requests_total{{model="{BROKEN}",route="segment",status="500"}} 2.0' in metrics


def test_a_client_error_is_still_4xx_and_not_logged_as_a_failure(broken_server):
    tracebacks = broken_server.log().count("Traceback")
    r = httpx.post(f"{broken_server.url}/segment", content=b"not an image", headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["code"] == "undecodable_input"
    r = httpx.post(f"{broken_server.url}/segment?score_threshold=0.5", content=make_image(40, 50),
                   headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_parameter"
    assert broken_server.log().count("Traceback") == tracebacks


def test_refusals_at_capacity_are_reported_once_per_interval_with_their_count(caplog):
    from segserve.scheduler.clock import ManualClock
    from segserve.transport.observe import ShedLog

    clock = ManualClock()
    shed = ShedLog(interval_s=10.0, clock=clock)
    with caplog.at_level("WARNING", logger="segserve.transport.observe"):
        for _ in range(500):
            shed.refused("segment", "m", "model m is at capacity")
        clock.t += 10.0
        shed.refused("segment", "m", "model m is at capacity")
        shed.refused("segment_video", "m", "model m is at capacity")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "segment m: refused 1 request(s) at capacity: model m is at capacity",
        "segment m: refused 500 request(s) at capacity in the last 10 s: model m is at capacity",
        "segment_video m: refused 1 request(s) at capacity: model m is at capacity",
    ]
