"""The HTTP API contract against the real app serving a real exported ONNX model on ONNX
Runtime CPU: in this process through the ASGI interface (tests/servers.py, InProcessServer)
for the API itself, and through a real `segserve serve` process (ServerProcess) for what
needs one.

Real process, and why: ``ab`` with and without ``-k`` and the HTTP/1.0 keep-alive header
(uvicorn's protocol and segserve's SegserveHttpProtocol on a socket), clients that hang up
mid-request (a socket to close), and SIGTERM (uvicorn's graceful shutdown, then the drain).
"""

from __future__ import annotations

import asyncio
import io
import shutil
import signal
import socket
import subprocess
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pycocotools import mask as mask_utils

from segserve.transport.http.schemas import ErrorResponse, ModelList, SemanticResponse
from segserve_loadtest.ab import parse_ab_output
from tests.conftest import SEMANTIC, copy_model, make_image
from tests.servers import ServerProcess, app_server


def post_image(client: httpx.Client, data: bytes, content_type="image/jpeg", params=None, headers=None) -> httpx.Response:
    return client.post("/segment", content=data, params=params, headers={"Content-Type": content_type, **(headers or {})}, timeout=60)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = ErrorResponse.model_validate(response.json())
    assert body.error.code == code
    assert body.error.message


@pytest.mark.parametrize("h,w,fmt,ctype", [(480, 640, "JPEG", "image/jpeg"), (37, 501, "PNG", "image/png"), (300, 200, "WEBP", "image/webp")])
def test_segment_returns_rle_masks_at_original_size(server, h, w, fmt, ctype):
    r = post_image(server.client, make_image(h, w, fmt), ctype)
    assert r.status_code == 200, r.text
    assert r.headers["content-length"] == str(len(r.content))  # ab -k needs it: no chunked bodies
    assert r.headers["x-request-id"]
    body = SemanticResponse.model_validate(r.json())
    assert (body.model, body.task, body.width, body.height) == (SEMANTIC, "semantic", w, h)
    assert len(body.classes) == 21
    total = np.zeros((h, w), np.int32)
    for seg in body.segments:
        m = mask_utils.decode({"size": seg.mask.size, "counts": seg.mask.counts.encode()})
        assert m.shape == (h, w)
        assert m.sum() == seg.area
        assert seg.label == body.classes[seg.class_id]
        total += m
    assert (total == 1).all()  # every pixel in exactly one class
    assert body.timing_ms.total >= body.timing_ms.compute > 0


def test_multipart_upload(server):
    files = {"image": ("photo.jpg", make_image(64, 96), "image/jpeg")}
    r = server.client.post("/segment", files=files, timeout=60)
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (96, 64)


def test_multipart_without_image_field_is_400(server):
    r = server.client.post("/segment", files={"picture": ("x.jpg", make_image(8, 8), "image/jpeg")}, timeout=30)
    assert_error(r, 400, "bad_parameter")


@pytest.mark.parametrize("how", ["query", "accept"])
def test_png_label_map_matches_the_json_masks(server, how):
    data = make_image(90, 170, "PNG", seed=3)
    params, headers = ({"format": "png"}, None) if how == "query" else (None, {"Accept": "image/png"})
    r = post_image(server.client, data, "image/png", params=params, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    label_map = np.asarray(Image.open(io.BytesIO(r.content)))
    assert label_map.shape == (90, 170)
    for seg in post_image(server.client, data, "image/png").json()["segments"]:
        m = mask_utils.decode({"size": seg["mask"]["size"], "counts": seg["mask"]["counts"].encode()})
        assert (m.astype(bool) == (label_map == seg["class_id"])).all()


def test_models_health_ready_docs(server):
    models = ModelList.model_validate(server.client.get("/v1/models").json())
    assert models.default_model == SEMANTIC
    info = models.models[0]
    assert (info.state, info.backend, info.device) == ("READY", "onnxruntime", "CPUExecutionProvider")
    assert info.weights.source == "random" and (info.input.height, info.input.width) == (128, 128)
    assert server.client.get(f"/v1/models/{SEMANTIC}").json()["name"] == SEMANTIC
    assert_error(server.client.get("/v1/models/nope"), 404, "model_not_found")
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz").status_code == 200
    spec = server.client.get("/openapi.json").json()
    assert "image/jpeg" in spec["paths"]["/segment"]["post"]["requestBody"]["content"]


def test_request_id_is_echoed_or_generated(server):
    r = post_image(server.client, make_image(16, 16), headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = {post_image(server.client, make_image(16, 16)).headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in generated)


@pytest.mark.parametrize(
    "params,code",
    [({"model": "nope"}, (404, "model_not_found")), ({"format": "gif"}, (400, "bad_parameter")),
     ({"timeout_ms": "0"}, (400, "bad_parameter")), ({"timeout_ms": "soon"}, (400, "bad_parameter")),
     ({"bogus": "1"}, (400, "bad_parameter")), ({"score_threshold": "2"}, (400, "bad_parameter"))],
)
def test_bad_parameters(server, params, code):
    assert_error(post_image(server.client, make_image(16, 16), params=params), *code)


def test_bad_bodies(server):
    assert_error(post_image(server.client, b"hello", "text/plain"), 415, "unsupported_media_type")
    assert_error(post_image(server.client, b"\xff\xd8\xff garbage"), 422, "undecodable_input")
    assert_error(post_image(server.client, b""), 422, "undecodable_input")
    assert_error(post_image(server.client, make_image(300, 300, "PNG")[:200], "image/png"), 422, "undecodable_input")
    assert server.client.get("/healthz").status_code == 200


def test_deadline_exceeded_is_504(server):
    r = post_image(server.client, make_image(400, 400), params={"timeout_ms": "1"})
    assert_error(r, 504, "deadline_exceeded")


def test_metrics_show_requests_batches_and_queue(server):
    async def burst(client):
        data = make_image(120, 160)
        return await asyncio.gather(*(client.post("/segment", content=data, headers={"Content-Type": "image/jpeg"}) for _ in range(24)))

    assert {r.status_code for r in server.run(burst)} == {200}
    families = {f.name: f for f in text_string_to_metric_families(server.client.get("/metrics").text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    ok = samples[("segserve_requests_total", (("model", SEMANTIC), ("route", "segment"), ("status", "200")))]
    assert ok >= 24
    batches = samples[("segserve_batch_size_count", (("model", SEMANTIC),))]
    batched = samples[("segserve_batch_size_sum", (("model", SEMANTIC),))]
    assert batched / batches > 1  # concurrent requests were batched
    for name in ("segserve_queue_time_seconds_count", "segserve_compute_time_seconds_count"):
        assert samples[(name, (("model", SEMANTIC),))] >= 24
    assert ("segserve_queue_depth", (("model", SEMANTIC),)) in samples


@pytest.fixture(scope="module")
def limited_server(semantic_repo, tmp_path_factory):
    """Tiny limits: a 1-deep queue, one instance, small bodies and images."""
    repo = tmp_path_factory.mktemp("limited")
    copy_model(semantic_repo, repo, dynamic_batching__max_queue_size=1, max_batch_size=1)
    with app_server(repo, max_body_bytes=200_000, max_image_pixels=250_000) as s:
        yield s


def test_limits_give_413_and_422(limited_server):
    assert_error(post_image(limited_server.client, b"\0" * 300_000), 413, "payload_too_large")
    assert_error(post_image(limited_server.client, make_image(600, 600, "PNG"), "image/png"), 422, "too_many_pixels")


def test_overload_gets_immediate_503_with_retry_after_and_every_request_one_answer(limited_server):
    async def flood(client):
        data = make_image(400, 400)
        return await asyncio.gather(*(client.post("/segment", content=data, headers={"Content-Type": "image/jpeg"}) for _ in range(40)))

    responses = limited_server.run(flood)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    # the model holds 2 at once (queue 1 + one running): the rest are refused at the door, at once
    assert statuses.count(200) >= 1 and statuses.count(503) >= 30
    for r in responses:
        if r.status_code == 503:
            assert_error(r, 503, "queue_full")
            assert int(r.headers["retry-after"]) >= 1
    assert limited_server.client.get("/healthz").status_code == 200


def broken_model(repo):
    (repo / "broken").mkdir()
    (repo / "broken" / "config.yaml").write_text("name: broken\nclasses: [a]\n")  # no version folder


def test_batches_close_at_the_preferred_batch_size_below_what_the_model_accepts(semantic_repo, tmp_path):
    """dynamic_batching.preferred_batch_size 2 under max_batch_size 8 and a 2 s batching window:
    four requests at once run as two batches of two, without waiting out the window, while
    the model still accepts (and shows) batches of 8."""
    repo = tmp_path / "repo"
    copy_model(semantic_repo, repo, instances=1, max_batch_size=8, dynamic_batching__max_queue_delay_ms=2000,
               dynamic_batching__preferred_batch_size=2)

    async def four(client):
        data = make_image(120, 160, seed=5)
        return await asyncio.gather(*(client.post("/segment", content=data, headers={"Content-Type": "image/jpeg"}) for _ in range(4)))

    with app_server(repo) as s:
        (info,) = s.client.get("/v1/models").json()["models"]
        assert (info["max_batch_size"], info["batch_size"]) == (8, 2)
        started = time.monotonic()
        responses = s.run(four)
        assert time.monotonic() - started < 2.0
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.headers["x-batch-size"] for r in responses] == ["2"] * 4


def test_preferred_batch_size_above_max_batch_size_is_refused():
    from pydantic import ValidationError

    from segserve.contract.model_config import ModelConfig

    with pytest.raises(ValidationError, match="must not exceed max_batch_size"):
        ModelConfig(name="m", classes=["a"], max_batch_size=4, dynamic_batching={"preferred_batch_size": 8})


def test_readyz_is_503_when_no_model_loads(tmp_path):
    broken_model(tmp_path)
    with app_server(tmp_path) as s:
        ready = s.client.get("/readyz")
        assert_error(ready, 503, "model_not_ready")
        assert int(ready.headers["retry-after"]) >= 1
        info = s.client.get("/v1/models").json()["models"][0]
        assert info["state"] == "UNAVAILABLE" and "version" in info["reason"]
        assert_error(post_image(s.client, make_image(16, 16), params={"model": "broken"}), 503, "model_not_ready")
        assert "model broken unavailable" in s.log()


# -- a real `segserve serve` process (process_server: tests/conftest.py) ---------------------
def test_client_that_disconnects_does_not_hurt_the_server(process_server):
    data = make_image(480, 640)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", process_server.port)) as s:
            head = f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
            s.sendall(head.encode() + data)
    assert post_image(process_server.client, make_image(32, 32)).status_code == 200


def raw_post(port: int, data: bytes, model: str = SEMANTIC) -> socket.socket:
    """A whole POST /segment sent on a socket of its own; the answer is left to read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = f"POST /segment?model={model} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    s.sendall(head.encode() + data)
    return s


def read_answer(s: socket.socket) -> tuple[bytes, dict, bytes]:
    """(status line, headers, body) of the answer on ``s``, read until the server closes it."""
    with s:
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, dict(line.lower().split(b": ", 1) for line in lines), body


def test_sigterm_answers_the_requests_in_flight_then_exits_cleanly(semantic_repo, tmp_path):
    """uvicorn's graceful shutdown, then the lifespan's drain: requests already read when
    SIGTERM comes (here waiting in a 2 s batching window) get their answers; the process
    exits cleanly, also with a model that failed to load."""
    repo = tmp_path / "repo"
    copy_model(semantic_repo, repo, instances=1, max_batch_size=8, dynamic_batching__max_queue_delay_ms=2000,
               dynamic_batching__preferred_batch_size=8)
    broken_model(repo)
    with ServerProcess(repo, tmp_path / "server.log") as s:
        data = make_image(120, 160, seed=4)
        sockets = [raw_post(s.port, data) for _ in range(3)]
        # Answered on a later connection: the event loop has read the three requests by then
        # (accepted in order, their bytes already there), so uvicorn counts them in flight.
        assert s.client.get("/healthz").status_code == 200
        s.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        answers = [read_answer(sock) for sock in sockets]
        # On its own (a second SIGTERM would cut the shutdown short). uvicorn re-raises SIGTERM
        # after its graceful shutdown: -15 is a clean exit here.
        assert s.process.wait(timeout=30) in (0, -15)
    assert time.monotonic() - signalled < 30  # drained, not killed after the grace period
    for status, headers, body in answers:
        assert status.startswith(b"HTTP/1.1 200"), (status, body)
        assert headers[b"x-batch-size"] == b"3"  # the three waited in one window: SIGTERM came while they did
        assert SemanticResponse.model_validate_json(body).segments
    assert "model broken unavailable" in s.log()
    assert "Application shutdown complete" in s.log()


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) not installed")
def test_plain_ab_without_dash_l_sees_no_failures(process_server, tmp_path):
    """`ab` without -l fails every body whose length differs from the first: identical
    requests must get identical-length answers, whatever batch they ran in."""
    body = tmp_path / "photo.jpg"
    body.write_bytes(make_image(240, 320, seed=11))
    out = subprocess.run(
        ["ab", "-n", "120", "-c", "16", "-p", str(body), "-T", "image/jpeg", f"{process_server.url}/segment"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    report = parse_ab_output(out)
    assert report["complete_requests"] == 120
    assert report["failed_requests"] == 0, out
    assert report["non_2xx_responses"] == 0


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) not installed")
def test_ab_keepalive_reuses_connections(process_server, tmp_path):
    """ab speaks HTTP/1.0: with -k every request must ride a kept-alive connection."""
    body = tmp_path / "photo.jpg"
    body.write_bytes(make_image(120, 160, seed=12))
    out = subprocess.run(
        ["ab", "-k", "-n", "60", "-c", "4", "-p", str(body), "-T", "image/jpeg", f"{process_server.url}/segment"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    report = parse_ab_output(out)
    assert (report["complete_requests"], report["failed_requests"], report["non_2xx_responses"]) == (60, 0, 0), out
    assert report["keep_alive_requests"] == 60


def test_http10_keepalive_is_announced_with_content_length(process_server):
    """ab decides to reuse a connection from this header; HTTP/1.0 needs the Content-Length."""
    with socket.create_connection(("127.0.0.1", process_server.port)) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head = s.recv(4096).lower()
    assert b"200" in head.split(b"\r\n")[0]
    assert b"connection: keep-alive" in head and b"content-length" in head


def test_sigterm_turns_readiness_off_first_and_serves_through_the_delay(semantic_repo, tmp_path):
    """With SEGSERVE_SHUTDOWN_DELAY_S, a SIGTERM first takes the server out of readiness (what a
    load balancer watches) while it goes on answering, then stops gracefully."""
    with ServerProcess(semantic_repo, tmp_path / "server.log", env={"SEGSERVE_SHUTDOWN_DELAY_S": "3"}) as s:
        assert s.client.get("/readyz").status_code == 200
        s.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        while s.client.get("/readyz").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert post_image(s.client, make_image(32, 32)).status_code == 200  # still serving
        assert s.stop() in (0, -15)
    log = s.log()
    assert "readiness off" in log and "draining batchers" in log and "batchers drained" in log

