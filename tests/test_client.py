"""segserve.client against the real app: in this process (tests/servers.py) for the API, a real
`segserve serve` process where a socket matters (the connection-error retries, the CLI).

The server side is never stubbed: overload is a real model with a queue of 1 flooded by the
client, the video a real mp4 decoded by PyAV and sent as chunks of one stream to the LRASPP
video split, whose keyframe state carries from chunk to chunk."""

from __future__ import annotations

import asyncio
import io
import time

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from segserve.client import AsyncClient, Client, RetryPolicy, SegserveError
from segserve.client.result import Result
from segserve.codecs.overlay import blend_labels, draw_instances, encode_jpeg
from segserve_models.synthetic import make_scene, make_video
from segserve_models.video_split import export_video_split
from tests.conftest import INSTANCE_SPLIT, SEMANTIC, copy_model, make_image
from segserve_loadtest.server import free_port
from tests.servers import BASE_URL, app_server

SPLIT = "lraspp_video"
STREAM_IDLE_S = 2.0
JPEG = {"Content-Type": "image/jpeg"}


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client_repo(semantic_repo, tmp_path_factory):
    """The session's LRASPP as it is, with its video split, and with a queue of 1 (overload)."""
    repo = tmp_path_factory.mktemp("client_repo")
    copy_model(semantic_repo, repo, SEMANTIC)
    copy_model(semantic_repo, repo, SPLIT)
    export_video_split(repo, SPLIT)
    copy_model(semantic_repo, repo, "tight", instances=1, max_batch_size=1, dynamic_batching__max_queue_size=1)
    return repo


@pytest.fixture(scope="module")
def app(client_repo):
    # streams idle for 2 s are dropped: the restarted-stream test waits that long (and chunks of one
    # stream follow each other far sooner, even on a loaded machine)
    with app_server(client_repo, video_stream_idle_s=STREAM_IDLE_S, default_model=SEMANTIC) as server:
        yield server


@pytest.fixture
def client(app):
    with Client(BASE_URL, transport=app.transport()) as c:
        yield c


class CountingTransport(httpx.BaseTransport):
    """The real transport, counting the requests that go through it."""

    def __init__(self, inner):
        self.inner, self.sent = inner, 0

    def handle_request(self, request):
        self.sent += 1
        return self.inner.handle_request(request)


def server_png(app, data: bytes, **params) -> np.ndarray:
    r = app.client.post("/segment", content=data, params={"format": "png", **params}, headers=JPEG)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)))


# -- images --------------------------------------------------------------------------------
def test_segment_takes_a_path_bytes_a_pil_image_or_an_array(app, client, tmp_path):
    data = make_image(90, 120, "PNG", seed=3)  # PNG: every form below is the same pixels
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    expected = server_png(app, data)
    for image in (path, str(path), data, Image.fromarray(rgb), rgb):
        result = client.segment(image)
        assert isinstance(result, Result) and result.model == SEMANTIC and result.task == "semantic"
        assert result.label_map.shape == (90, 120) == result.shape
        np.testing.assert_array_equal(result.label_map, expected)  # the RLEs decode to the server's own map
        assert sum(s.area for s in result.segments) == 90 * 120
        assert all(s.mask.sum() == s.area for s in result.segments)
        assert result.timing.compute_ms > 0 and result.timing.round_trip_ms >= result.timing.total_ms > 0


def test_overlay_is_drawn_alike_by_the_server_and_the_client(app, client):
    data = make_image(96, 128, "PNG", seed=1)
    result = client.segment(data)
    mine = result.overlay()
    assert mine.shape == (96, 128, 3)
    np.testing.assert_array_equal(mine, blend_labels(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), result.label_map))
    assert encode_jpeg(mine) == client.overlay(data)  # the server drew the same picture, byte for byte
    r = app.client.post("/segment", content=data, params={"format": "overlay"}, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    bad = app.client.post("/segment", content=data, params={"format": "gif"}, headers={"Content-Type": "image/png"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_parameter"


def test_segment_many_keeps_the_order_and_yields_failures_in_place(client):
    images = [make_image(40 + 8 * i, 64, seed=i) for i in range(6)]
    images.insert(3, b"not an image")
    results = list(client.segment_many(images, concurrency=3, return_exceptions=True))
    assert [r.height if isinstance(r, Result) else r.status for r in results] == [40, 48, 56, 422, 64, 72, 80]
    assert results[3].code == "undecodable_input"
    with pytest.raises(SegserveError) as raised:
        list(client.segment_many(images, concurrency=2))
    assert raised.value.status == 422


def test_client_errors_are_raised_at_once_never_retried(app):
    counting = CountingTransport(app.transport())
    with Client(BASE_URL, transport=counting, retry=RetryPolicy(attempts=5, backoff_s=0.01)) as client:
        for image, options, status, code in [
            (b"garbage", {}, 422, "undecodable_input"),
            (make_image(32, 32), {"model": "nope"}, 404, "model_not_found"),
            (make_image(32, 32), {"score_threshold": "0.5"}, 400, "bad_parameter"),  # not a semantic option
        ]:
            sent = counting.sent
            with pytest.raises(SegserveError) as raised:
                client.segment(image, **options)
            assert (raised.value.status, raised.value.code) == (status, code) and raised.value.message
            assert counting.sent == sent + 1


def test_the_deadline_goes_to_the_server_as_timeout_ms(app):
    counting = CountingTransport(app.transport())
    with Client(BASE_URL, transport=counting) as client:
        with pytest.raises(SegserveError) as raised:
            client.segment(make_image(64, 64), timeout_ms=1)  # spent before the image is decoded
        assert (raised.value.status, raised.value.code) == (504, "deadline_exceeded") and counting.sent == 1
        assert client.segment(make_image(64, 64), timeout_ms=20_000).height == 64


def test_overload_503s_are_retried_after_retry_after_until_every_image_is_done(app):
    """The model holds 2 requests at once (a queue of 1, one running): 12 at a time get 503s with
    Retry-After, and the client comes back when told until every image is answered."""
    images = [make_image(160, 160, seed=i) for i in range(16)]

    async def flood(retry: RetryPolicy):
        async with AsyncClient(BASE_URL, model="tight", transport=app.transport(), retry=retry) as client:
            return [r async for r in client.segment_many(images, concurrency=12, return_exceptions=True)]

    refused_before = refused(app)
    started = time.perf_counter()
    results = asyncio.run(flood(RetryPolicy(attempts=30)))
    assert all(isinstance(r, Result) for r in results), [r for r in results if not isinstance(r, Result)]
    assert [r.height for r in results] == [160] * 16
    assert refused(app) - refused_before >= 8  # the server did refuse, and every refusal was retried
    # a refused request came back after Retry-After (>= 1 s), not at once
    assert max(r.timing.round_trip_ms for r in results) >= 900 and time.perf_counter() - started < 60
    once = asyncio.run(flood(RetryPolicy(attempts=1)))  # no retries: the 503s reach the caller
    assert {(e.status, e.code) for e in once if isinstance(e, SegserveError)} == {(503, "queue_full")}


def refused(app) -> float:
    for line in app.client.get("/metrics").text.splitlines():
        if line.startswith("segserve_requests_total") and 'model="tight"' in line and 'status="503"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_connection_errors_are_retried_with_backoff_then_raised():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, retry=RetryPolicy(attempts=3, backoff_s=0.2, jitter=0)) as client:
        started = time.perf_counter()
        with pytest.raises(SegserveError) as raised:
            client.segment(make_image(16, 16))
        elapsed = time.perf_counter() - started
    assert raised.value.status is None and raised.value.code == "connection_error" and "after 3 tries" in raised.value.message
    assert 0.6 <= elapsed < 5  # waited 0.2 s, then 0.4 s


# -- video ---------------------------------------------------------------------------------
def write_mp4(path, count: int, height: int = 96, width: int = 128) -> list[np.ndarray]:
    images = [scene.image for scene in make_video(0, count, height, width).frames]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return images


def test_a_video_goes_as_chunks_of_one_stream_and_later_chunks_reuse_keyframes(client, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_mp4(clip, 10)
    stream = client.stream(clip, SPLIT, chunk_frames=4, keyframe_interval=6)
    frames = list(stream)
    assert [f.index for f in frames] == list(range(10))
    assert [f.sequence for f in frames] == [0] * 4 + [1] * 4 + [2] * 2
    # one keyframe state across the chunks: a keyframe every 6 frames, not at each chunk's start
    assert [f.index for f in frames if f.keyframe] == [0, 6]
    assert all(f.label_map.shape == (96, 128) and f.overlay().shape == (96, 128, 3) for f in frames)
    assert (stream.stats.chunks, stream.stats.frames, stream.stats.keyframes, stream.stats.restarts) == (3, 10, 2, 0)
    assert [f.pts for f in frames[:3]] == pytest.approx([0.0, 0.1, 0.2])


def test_a_stream_recovers_from_a_409_and_from_a_restart(client, tmp_path):
    write_mp4(tmp_path / "clip.mp4", 6)
    write_mp4(tmp_path / "first.mp4", 1)
    # chunk 0 of stream "taken" is done already (say, its answer was lost): the server expects 1.
    # Sent on the client's own connection, as the chunks after it: a stream's state is its worker's
    # with --workers N (docs/deployment.md), one connection stays with one worker.
    assert len(list(client.stream(tmp_path / "first.mp4", SPLIT, stream_id="taken"))) == 1
    stream = client.stream(tmp_path / "clip.mp4", SPLIT, chunk_frames=3, keyframe_interval=100, stream_id="taken")
    frames = list(stream)
    assert [f.index for f in frames] == list(range(6)) and [f.sequence for f in frames] == [1, 1, 1, 2, 2, 2]
    assert stream.stats.conflicts == 1 and not any(f.keyframe for f in frames)  # continued the server's state

    # the server drops a stream idle for STREAM_IDLE_S: the next chunk is answered as a restarted stream
    stream = client.stream(tmp_path / "clip.mp4", SPLIT, chunk_frames=3, keyframe_interval=100)
    frames = []
    for frame in stream:
        frames.append(frame)
        if frame.index == 2:
            time.sleep(STREAM_IDLE_S * 2.5)  # the sweeper looks every STREAM_IDLE_S / 2
    assert [f.index for f in frames if f.keyframe] == [0, 3] and stream.stats.restarts == 1


class CutOnce(httpx.BaseTransport):
    """The real transport, but the first /segment/video answer is cut off after ``lines`` of its
    NDJSON lines, as a dropped connection cuts it (the server did finish that chunk)."""

    def __init__(self, inner, lines: int):
        self.inner, self.lines, self.requests = inner, lines, []

    def handle_request(self, request):
        response = self.inner.handle_request(request)
        if request.url.path != "/segment/video":
            return response
        self.requests.append((dict(request.url.params), request.headers.get("accept")))
        if len(self.requests) > 1:
            return response
        kept = b"".join(response.read().splitlines(keepends=True)[: self.lines])

        class Cut(httpx.SyncByteStream):
            def __iter__(self):
                yield kept
                raise httpx.ReadError("connection reset by peer")

        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, stream=Cut())


def test_frames_stream_as_ndjson_and_an_answer_cut_off_midway_is_resumed(app, tmp_path):
    write_mp4(tmp_path / "clip.mp4", 6)
    cut = CutOnce(app.transport(), lines=4)  # the head and frames 0-2
    with Client(BASE_URL, transport=cut, retry=RetryPolicy(backoff_s=0.01)) as client:
        stream = client.stream(tmp_path / "clip.mp4", SPLIT, chunk_frames=6, keyframe_interval=100)
        frames = list(stream)
    assert [f.index for f in frames] == list(range(6))  # each frame once, in order
    assert all(accept == "application/x-ndjson" for _, accept in cut.requests)
    # the cut answer's chunk was done on the server: sent again it is a 409 that names the next
    # sequence, and the rest of the frames come from the chunk sent as that one
    assert [r["sequence"] for r, _ in cut.requests] == ["0", "0", "1"]
    assert stream.stats.conflicts == 1 and stream.stats.chunks == 1 and stream.stats.frames == 6
    assert [f.sequence for f in frames] == [0, 0, 0, 1, 1, 1]


def test_async_stream_and_segment(app, tmp_path):
    write_mp4(tmp_path / "clip.mp4", 5)

    async def main():
        async with AsyncClient(BASE_URL, transport=app.transport()) as client:
            result = await client.segment(make_image(50, 70))
            frames = [f async for f in client.stream(tmp_path / "clip.mp4", SPLIT, chunk_frames=2, keyframe_interval=4)]
            return result, frames

    result, frames = asyncio.run(main())
    assert result.label_map.shape == (50, 70)
    assert [f.index for f in frames] == list(range(5)) and [f.index for f in frames if f.keyframe] == [0, 4]


# -- instance models -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def instance_app(instance_repo):
    with app_server(instance_repo, models=[INSTANCE_SPLIT]) as server:
        yield server


def test_instance_results_and_overlays(instance_app):
    scene = make_scene(3, 160, 200)  # shapes the bundled model was trained to find
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="PNG")
    data = buf.getvalue()
    with Client(BASE_URL, transport=instance_app.transport()) as client:
        result = client.segment(data, score_threshold=0.3)
        assert result.task == "instance" and result.instances
        n = len(result.instances)
        assert result.masks.shape == (n, 160, 200) and result.boxes.shape == (n, 4) and result.scores.shape == (n,)
        assert list(result.scores) == sorted(result.scores, reverse=True) and result.keypoints is None
        served = np.asarray(Image.open(io.BytesIO(instance_app.client.post(
            "/segment", content=data, params={"format": "png", "score_threshold": 0.3}, headers={"Content-Type": "image/png"}).content)))
        np.testing.assert_array_equal(result.instance_map, served)
        assert set(np.unique(result.label_map)) <= {0, *result.class_ids.tolist()}
        mine = result.overlay()
        assert mine.shape == (160, 200, 3) and not np.array_equal(mine, scene.image)  # something was drawn
        assert encode_jpeg(mine) == client.overlay(data, score_threshold=0.3)  # the server drew the same picture


def test_draw_instances_outlines_boxes_and_blends_masks():
    rgb = np.full((40, 60, 3), 200, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    out = draw_instances(rgb, [mask], [(10, 10, 30, 20)], [1], ["thing 0.90"])
    assert out.shape == rgb.shape and (out[15, 20] != 200).any() and (out[35, 50] == 200).all()
    with pytest.raises(ValueError):
        blend_labels(rgb, np.zeros((4, 4), np.uint8))
