"""What a hostile or unlucky client can do to the server, and what it gets back (issue 13):
made-up model names must not grow /metrics, overload is refused before the body is read,
deadlines count from arrival, a client that hangs up is not an error, extreme aspect ratios
and EXIF-rotated photos are segmented, error messages leak no memory addresses.

In-process (tests/servers.py) except where a real socket is the point: a body that never
arrives, a client that hangs up mid-upload."""

from __future__ import annotations

import io
import json
import select
import socket
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.conftest import INSTANCE_SPLIT, SEMANTIC, copy_model, make_image
from tests.servers import WORKERS, ServerProcess, app_server

JPEG = {"Content-Type": "image/jpeg"}


def post(server, data: bytes, headers=JPEG, **params):
    return server.client.post("/segment", content=data, params=params, headers=headers)


# -- metrics -----------------------------------------------------------------------------
def test_made_up_model_names_do_not_become_metric_labels(server):
    for i in range(50):
        assert post(server, make_image(16, 16), model=f"no-such-model-{i}").status_code == 404
    text = server.client.get("/metrics").text
    assert "no-such-model" not in text
    assert 'segserve_requests_total{model="unknown",route="segment",status="404"}' in text


# -- error path --------------------------------------------------------------------------
def test_decoder_errors_name_no_memory_addresses(server):
    r = post(server, b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    assert r.status_code == 422
    assert "0x" not in r.json()["error"]["message"] and "object at" not in r.json()["error"]["message"]


def test_405_says_which_methods_are_allowed(server):
    r = server.client.get("/segment")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]


def test_video_rejects_unknown_query_parameters_as_segment_does(server):
    r = server.client.post("/segment/video", content=b"x", params={"bogus": "1"}, headers={"Content-Type": "video/mp4"})
    assert r.status_code == 400 and "bogus" in r.json()["error"]["message"]


def test_a_default_model_that_failed_to_load_stays_the_default(semantic_repo, tmp_path):
    copy_model(semantic_repo, tmp_path, "aaa_broken", onnxruntime__model_file="missing.onnx", backends=["onnxruntime"])
    copy_model(semantic_repo, tmp_path, "zzz_good")
    with app_server(tmp_path, warmup=False) as server:
        assert server.client.get("/v1/models").json()["default_model"] == "aaa_broken"
        r = post(server, make_image(32, 32))
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        assert "missing.onnx" in r.json()["error"]["message"] and r.headers["retry-after"]
        assert post(server, make_image(32, 32), model="zzz_good").status_code == 200


# -- images the models must survive -----------------------------------------------------
def png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def instance_server(instance_repo):
    with app_server(instance_repo, models=[INSTANCE_SPLIT]) as server:
        yield server


@pytest.mark.parametrize("height,width,fmt", [(1, 10000, "PNG"), (10000, 1, "PNG"), (1, 65000, "PNG"), (2, 20000, "JPEG")])
def test_extreme_aspect_ratios_are_segmented(instance_server, server, height, width, fmt):
    data = png(height, width) if fmt == "PNG" else make_image(height, width)
    for target, model in ((instance_server, INSTANCE_SPLIT), (server, SEMANTIC)):
        r = post(target, data, headers={"Content-Type": f"image/{fmt.lower()}"}, model=model)
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (width, height)


def test_exif_orientation_is_honoured(server):
    """A photo stored sideways (EXIF orientation 6: rotate 90 degrees clockwise to display)
    is answered as displayed: its size, and masks in the displayed orientation."""
    stored = np.zeros((60, 90, 3), np.uint8)
    stored[:, :30] = 255  # a white band on the stored image's left: on top once displayed
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    r = post(server, buffer.getvalue(), format="png")
    assert r.status_code == 200
    labels = np.array(Image.open(io.BytesIO(r.content)))
    assert labels.shape == (90, 60)  # displayed: 60 wide, 90 tall
    body = post(server, buffer.getvalue()).json()
    assert (body["width"], body["height"]) == (60, 90)
    for segment in body["segments"]:
        assert mask_utils.decode({"size": segment["mask"]["size"], "counts": segment["mask"]["counts"].encode()}).shape == (90, 60)


# -- overload and slow clients: real sockets ------------------------------------------------
@pytest.fixture(scope="module")
def tight_server(semantic_repo, tmp_path_factory):
    """One engine instance, batch 1, a queue of 1: at most 2 requests in flight."""
    repo = tmp_path_factory.mktemp("tight_repo")
    copy_model(semantic_repo, repo, SEMANTIC, instances=1, max_batch_size=1, dynamic_batching__max_queue_size=1)
    env = {"SEGSERVE_HEADER_TIMEOUT_S": "0.5"}
    with ServerProcess(repo, tmp_path_factory.mktemp("logs") / "tight.log", env=env) as server:
        yield server


def stalled_upload(server, declared: int = 50_000, sent: bytes = b"\xff\xd8", timeout_ms: int | None = None) -> socket.socket:
    """A request whose body starts and then stops coming."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    query = f"?timeout_ms={timeout_ms}" if timeout_ms else ""
    sock.sendall(
        f"POST /segment{query} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {declared}\r\n\r\n".encode() + sent
    )
    return sock


def status_line(sock: socket.socket) -> bytes:
    return sock.recv(65536).split(b"\r\n", 1)[0]


def test_at_capacity_a_request_is_refused_before_its_body_is_read(tight_server):
    """Uploads that stall after two bytes: each process admits 2 (queue 1 + one running), the
    rest are answered 503 at once, their bodies never sent. (With --workers N the budget is per
    worker and the kernel picks the worker of each connection: at least the uploads beyond
    2 x N are refused.)"""
    holders = [stalled_upload(tight_server) for _ in range(2 * WORKERS + 2)]
    try:
        time.sleep(0.5)  # the admitted ones wait for their bodies
        answered, _, _ = select.select(holders, [], [], 1.0)  # at once, not after the held requests
        assert len(answered) >= len(holders) - 2 * WORKERS, len(answered)
        for sock in answered:
            head, _, body = sock.recv(65536).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: " in head.lower(), head
            assert json.loads(body)["error"]["code"] == "queue_full"
    finally:
        for sock in holders:
            sock.close()
    deadline = time.monotonic() + 10  # the hung-up holders give their places back
    while tight_server.client.post("/segment", content=make_image(32, 32), headers=JPEG).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_body_that_never_arrives_is_a_504_at_the_deadline(tight_server):
    sock = stalled_upload(tight_server, timeout_ms=400)
    try:
        started = time.perf_counter()
        line = status_line(sock)
        assert b" 504 " in line, line
        assert time.perf_counter() - started < 3
    finally:
        sock.close()


def test_a_client_that_hangs_up_mid_upload_is_not_an_error(tight_server):
    tracebacks = tight_server.log().count("Traceback")
    sock = stalled_upload(tight_server)
    time.sleep(0.3)
    sock.close()
    deadline = time.monotonic() + 10
    while 'status="499"' not in tight_server.client.get("/metrics").text:
        assert time.monotonic() < deadline, tight_server.log()[-2000:]
        time.sleep(0.1)
    metrics = tight_server.client.get("/metrics").text
    assert 'route="segment",status="500"' not in metrics
    assert tight_server.log().count("Traceback") == tracebacks


def test_the_in_flight_pixel_budget_refuses_before_decoding(semantic_repo):
    with app_server(semantic_repo, max_inflight_pixels=1000, warmup=False) as server:
        r = post(server, make_image(40, 50))  # 2000 declared pixels: over the whole budget
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"]
        for _ in range(3):  # the budget is given back after every answer
            assert post(server, make_image(20, 20)).status_code == 200


def test_a_client_that_never_finishes_its_headers_is_cut_off(tight_server):
    sock = socket.create_connection(("127.0.0.1", tight_server.port), timeout=10)
    try:
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\n")  # and no more
        started = time.perf_counter()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.perf_counter() - started < 5
    finally:
        sock.close()
    assert "segserve_slow_clients_total 1.0" in tight_server.client.get("/metrics").text
