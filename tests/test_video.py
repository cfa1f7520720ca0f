"""Video: the LRASPP split, keyframe policy, streams, and POST /segment/video against the real
app in this process (tests/servers.py) serving a real exported model (random weights, 128x128
input) on ONNX Runtime.

Real process: none here; nothing in the video API depends on the socket or the process.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import av
import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pycocotools import mask as mask_utils

from segserve.codecs.geometry import Letterbox
from segserve.codecs.overlay import blend_labels, encode_jpeg
from segserve.contract.model_config import load_config
from segserve.errors import QueueFull, SequenceConflict, TooManyPixels
from segserve.pipelines.video.chunks import prepare_video
from segserve.pipelines.video.streams import (
    CHANGED_SHARE,
    KeyframePolicy,
    KeyframeState,
    KeyframeTracker,
    StreamRegistry,
    feature_change,
)
from segserve.scheduler.clock import ManualClock
from segserve_models.export import ExportError, sample_images
from segserve_models.synthetic import make_video
from segserve_models.train import CHECKPOINT_DIR
from segserve_models.video_correction import KeyframeClips
from segserve_models.video_correction import save as save_correction
from segserve_models.video_correction import train as train_correction
from segserve_models.video_split import SplitNet, export_video_split, load_served_net
from tests.conftest import copy_model
from tests.servers import app_server

SPLIT, PLAIN, BROKEN, CORRECTED = "lraspp_video", "lraspp_plain", "lraspp_broken_split", "lraspp_corrected"
HEIGHT, WIDTH = 96, 128


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video_repo(semantic_repo, tmp_path_factory):
    """The session's exported LRASPP with the video split, without, and with a config that
    names split files that are not there."""
    repo = tmp_path_factory.mktemp("video_repo")
    copy_model(semantic_repo, repo, SPLIT)
    export_video_split(repo, SPLIT)
    copy_model(semantic_repo, repo, PLAIN)
    copy_model(semantic_repo, repo, BROKEN, parameters={"video": {"dir": "missing", "keyframe_threshold": 0.2, "max_keyframe_interval": 4}})
    copy_model(semantic_repo, repo, CORRECTED)
    export_video_split(repo, CORRECTED, correction=random_correction(repo / CORRECTED, tmp_path_factory.mktemp("correction")))
    return repo


def random_correction(model_dir, workdir):
    """A correction checkpoint for the model's (random) weights: a real one, trained a few
    steps, with a random output layer so that it visibly changes labels."""
    config = load_config(model_dir)
    net = load_served_net(config, model_dir / "1")
    split = SplitNet(config.architecture, net)
    data = KeyframeClips(split, range(7, 9), gaps=3, size=config.input.height)
    correction, _ = train_correction(split, data, steps=2, seed=0, width=8)
    torch.manual_seed(0)
    torch.nn.init.normal_(correction.out.weight, std=2.0)
    save_correction(workdir / "correction.pth", correction, net, {"test": True})
    return workdir / "correction.pth"


@pytest.fixture(scope="module")
def video_server(video_repo):
    with app_server(video_repo, video_max_streams=3, video_max_frames=16, max_body_bytes=262144) as server:
        yield server


@pytest.fixture
def idle_server(video_repo):
    with app_server(video_repo, video_stream_idle_s=0.5, warmup=False, models=[SPLIT]) as server:
        yield server


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    return [scene.image for scene in make_video(seed, count, HEIGHT, WIDTH).frames]


def encode(images: list[np.ndarray], codec: str = "libx264", container: str = "mp4") -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=10)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def post_video(server, data: bytes, content_type: str = "video/mp4", headers=None, **params) -> httpx.Response:
    params.setdefault("model", SPLIT)
    return server.client.post(
        "/segment/video", content=data, params=params, headers={"Content-Type": content_type, **(headers or {})}, timeout=60,
    )


def keyframes(response: httpx.Response) -> list[bool]:
    assert response.status_code == 200, response.text
    return [f["keyframe"] for f in response.json()["frames"]]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def label_map(segments: list[dict], height: int, width: int) -> np.ndarray:
    labels = np.full((height, width), -1)
    for seg in segments:
        labels[mask_utils.decode({"size": seg["mask"]["size"], "counts": seg["mask"]["counts"].encode()}) == 1] = seg["class_id"]
    return labels


def until(condition, timeout_s: float = 10.0) -> None:
    """Poll (real time) for what the server does on its own timers."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout_s:g} s")
        time.sleep(0.05)


def metric(server, name: str, **labels) -> float:
    text = server.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# -- the split ---------------------------------------------------------------------------
def test_keyframe_path_matches_the_full_model(video_repo):
    import onnxruntime as ort

    version = video_repo / SPLIT / "1"
    run = {p: ort.InferenceSession(str(version / "video" / p / "model.onnx")).run for p in ("shallow", "deep", "fuse")}
    full = ort.InferenceSession(str(version / "model.onnx")).run
    images = sample_images(3, 128, 128, seed=5).numpy()
    (low,) = run["shallow"](None, {"images": images})
    (deep,) = run["deep"](None, {"low": low})
    (split_labels,) = run["fuse"](None, {"low": low, "deep": deep})
    (full_labels,) = full(None, {"images": images})
    assert split_labels.dtype == np.uint8 and split_labels.shape == full_labels.shape == (3, 128, 128)
    assert (split_labels == full_labels).mean() >= 0.999
    parity = json.loads((version / "video" / "export.json").read_text())["parity_keyframe_vs_full"]
    assert parity["label_agreement"] >= 0.999 and parity["max_abs_diff"] <= 1e-3 * max(1.0, parity["max_abs_logit"])


# -- keyframe policy ---------------------------------------------------------------------
def decisions(policy: KeyframePolicy, features: list[np.ndarray], state: KeyframeState | None = None, geometry="g") -> list[bool]:
    tracker = KeyframeTracker(policy, state or KeyframeState(), geometry)
    return [tracker.observe(f) for f in features]


def still(count: int) -> list[np.ndarray]:
    return [np.ones((4, 8, 8), np.float32)] * count


def test_fixed_interval_and_every_frame():
    assert decisions(KeyframePolicy(3), still(7)) == [True, False, False, True, False, False, True]
    assert decisions(KeyframePolicy(1), still(3)) == [True, True, True]


def test_adaptive_keyframe_on_change_and_at_the_longest_gap():
    moving = still(3) + [np.full((4, 8, 8), 2.0, np.float32)] * 3
    assert decisions(KeyframePolicy(100, threshold=0.5), moving) == [True, False, False, True, False, False]
    assert decisions(KeyframePolicy(4, threshold=0.5), still(6)) == [True, False, False, False, True, False]


def test_feature_change_is_scale_free():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 8, 8)), rng.normal(size=(40, 8, 8))
    assert feature_change(a, a) == 0
    assert feature_change(10 * b, 10 * a) == pytest.approx(feature_change(b, a), rel=1e-5)


def test_feature_change_is_the_top_percentile_of_per_cell_change():
    rng = np.random.default_rng(1)
    for shape in [(40, 16, 16), (40, 9, 13), (3, 1, 1)]:
        a, b = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
        per_cell = np.abs(a - b).mean(axis=0)
        expected = np.quantile(per_cell, 1.0 - CHANGED_SHARE) / (np.abs(b).mean() + 1e-6)
        assert feature_change(a, b) == pytest.approx(expected, rel=1e-6)


def test_feature_change_sees_a_local_change_the_frame_mean_would_dilute():
    reference = np.ones((40, 16, 16), np.float32)
    entered = reference.copy()
    entered[:, 3:5, 7:9] = 3.0  # a small object appears: 4 of 256 cells
    assert feature_change(entered, reference) > 1.5
    assert np.abs(entered - reference).mean() / np.abs(reference).mean() < 0.05  # what the frame mean sees


def test_tracker_continues_a_stream_and_restarts_on_new_geometry():
    tracker = KeyframeTracker(KeyframePolicy(4), KeyframeState(), "g")
    assert [tracker.observe(f) for f in still(3)] == [True, False, False]
    tracker.keyframe_cache = "cached"
    state = tracker.state()
    assert decisions(KeyframePolicy(4), still(3), state) == [False, True, False]
    assert decisions(KeyframePolicy(4), still(2), state, geometry="other") == [True, False]


# -- stream registry ---------------------------------------------------------------------
class RecordingObserver:
    def __init__(self):
        self.count, self.evictions = 0, []

    def live(self, count):
        self.count = count

    def evicted(self, reason):
        self.evictions.append(reason)


async def test_registry_orders_chunks_and_checks_sequences():
    registry = StreamRegistry(4, 60, RecordingObserver())
    stream = await registry.acquire("s", 0)
    assert stream.new
    waiting = asyncio.ensure_future(registry.acquire("s", 1))  # the next chunk waits for this one
    await asyncio.sleep(0.01)
    assert not waiting.done()
    registry.release(stream, KeyframeState(), 0)
    assert (await waiting) is stream and not stream.new
    registry.release(stream)  # failed chunk: sequence 1 not consumed
    for wrong in (0, 2):
        with pytest.raises(SequenceConflict):
            await registry.acquire("s", wrong)
    registry.release(await registry.acquire("s", 1), KeyframeState(), 1)
    registry.release(await registry.acquire("s", None), KeyframeState())  # no sequence: the next one
    assert stream.last_sequence == 2


async def test_registry_evicts_least_recently_used_idle_streams():
    observer, clock = RecordingObserver(), ManualClock(start=0.0)
    registry = StreamRegistry(2, 10, observer, clock)
    registry.release(await registry.acquire("a", 0), KeyframeState(), 0)
    busy = await registry.acquire("b", 0)
    registry.release(await registry.acquire("c", 0), KeyframeState(), 0)  # evicts a (b is busy)
    assert observer.evictions == ["capacity"] and observer.count == 2
    other = await registry.acquire("c", 1)
    with pytest.raises(QueueFull):  # both slots busy
        await registry.acquire("d", 0)
    registry.release(other)
    registry.release(busy)
    await clock.advance(11)
    registry.evict_idle()
    assert observer.evictions == ["capacity", "idle", "idle"] and len(registry) == 0


# -- POST /segment/video -----------------------------------------------------------------
def test_mp4_chunk_gives_masks_per_frame(video_server):
    r = post_video(video_server, encode(frames(6)), keyframe_interval=2)
    assert keyframes(r) == [True, False] * 3
    body = r.json()
    assert (body["model"], body["task"], body["width"], body["height"]) == (SPLIT, "semantic", WIDTH, HEIGHT)
    assert body["keyframes"] == 3 and body["new_stream"] and body["stream_id"] is None
    assert [f["index"] for f in body["frames"]] == list(range(6))
    assert [f["pts"] for f in body["frames"]] == pytest.approx([i / 10 for i in range(6)])
    for frame in body["frames"]:
        assert (label_map(frame["segments"], HEIGHT, WIDTH) >= 0).all()  # every pixel in exactly one mask
    assert body["timing_ms"]["total"] >= body["timing_ms"]["segment"] > 0
    # the chunk's frames went through the shallow engine in batches, not one by one
    shallow = {"model": f"{SPLIT}/shallow"}
    assert metric(video_server, "segserve_batch_size_sum", **shallow) > metric(video_server, "segserve_batch_size_count", **shallow)


def test_keyframes_equal_the_model_without_split(video_server):
    data = encode(frames(4, seed=3))
    split = post_video(video_server, data, keyframe_interval=2).json()["frames"]
    plain = post_video(video_server, data, model=PLAIN, keyframe_interval=2)
    assert keyframes(plain) == [True] * 4  # no split: every frame through the full model
    for i in (0, 2):
        ours = label_map(split[i]["segments"], HEIGHT, WIDTH)
        full = label_map(plain.json()["frames"][i]["segments"], HEIGHT, WIDTH)
        assert (ours == full).mean() >= 0.999


def test_a_broken_split_falls_back_to_frame_by_frame(video_server):
    r = post_video(video_server, encode(frames(3)), model=BROKEN, keyframe_interval=3)
    assert keyframes(r) == [True] * 3 and not r.json()["keyframe_policy"]["split"]
    assert "video split unavailable" in video_server.log()


@pytest.mark.skipif("libvpx-vp9" not in av.codecs_available, reason="this PyAV build has no VP9 encoder")
def test_webm_chunk(video_server):
    r = post_video(video_server, encode(frames(3), "libvpx-vp9", "webm"), "video/webm", keyframe_interval=1)
    assert keyframes(r) == [True] * 3


def test_truncated_or_garbage_video_is_422(video_server):
    data = encode(frames(4))
    assert_error(post_video(video_server, data[: len(data) // 2]), 422, "undecodable_input")
    assert_error(post_video(video_server, b"\x00garbage" * 100, "video/webm"), 422, "undecodable_input")
    assert_error(post_video(video_server, b""), 422, "undecodable_input")


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_multipart_frames(video_server):
    files = [("frame", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(frames(5))]
    r = video_server.client.post("/segment/video", params={"model": SPLIT, "frame_stride": 2}, files=files, timeout=60)
    assert keyframes(r)[0]
    assert [(f["index"], f["pts"]) for f in r.json()["frames"]] == [(0, None), (2, None), (4, None)]
    r = video_server.client.post("/segment/video", params={"model": SPLIT}, files={"image": ("a.png", png(frames(1)[0]))}, timeout=60)
    assert_error(r, 400, "bad_parameter")


def test_a_correction_trained_for_other_weights_is_refused(video_repo):
    bundled = CHECKPOINT_DIR / "shapes_lraspp_video.pth"  # trained for shapes_lraspp.pth, not these random weights
    with pytest.raises(ExportError, match="other weights"):
        export_video_split(video_repo, PLAIN, correction=bundled)
    assert not (video_repo / PLAIN / "1" / "video").exists()


def test_non_keyframes_use_the_trained_correction_across_chunks(video_server, video_repo):
    clip = frames(3, seed=4)

    def post(images, sequence):
        files = [("frame", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
        params = {"model": CORRECTED, "stream_id": "corrected", "sequence": sequence, "keyframe_interval": 3}
        return video_server.client.post("/segment/video", params=params, files=files, timeout=60)

    assert keyframes(post(clip[:1], 0)) == [True]
    second = post(clip[1:], 1)
    assert keyframes(second) == [False, False]

    # the same frames through the exported parts: frames 1 and 2 corrected from frame 0
    import onnxruntime as ort

    parts = video_repo / CORRECTED / "1" / "video"
    run = {p: ort.InferenceSession(str(parts / p / "model.onnx")).run for p in ("shallow", "deep", "fuse", "correct")}
    spec = load_config(video_repo / CORRECTED).input
    box = Letterbox.fit(HEIGHT, WIDTH, spec)
    images = np.stack([box.apply(image, spec.pad_value) for image in clip])
    (low,) = run["shallow"](None, {"images": images})
    (deep,) = run["deep"](None, {"low": low[:1]})
    for i, frame in enumerate(second.json()["frames"], start=1):
        (corrected,) = run["correct"](None, {"low": low[i : i + 1], "deep": deep, "key_low": low[:1]})
        (stale,) = run["fuse"](None, {"low": low[i : i + 1], "deep": deep})
        assert (corrected != stale).mean() > 0.05  # the correction changes labels: the check below can tell
        served = label_map(frame["segments"], HEIGHT, WIDTH)
        assert (served == box.restore(corrected[0])).mean() >= 0.999


def test_stream_continues_across_chunks(video_server):
    clip = frames(6)
    first = post_video(video_server, encode(clip[:3]), stream_id="cont", sequence=0, keyframe_interval=4)
    assert keyframes(first) == [True, False, False] and first.json()["new_stream"] and not first.json()["stream_restarted"]
    second = post_video(video_server, encode(clip[3:]), stream_id="cont", sequence=1, keyframe_interval=4)
    # frame 3 of the stream reuses frame 0's deep features from the first chunk
    assert keyframes(second) == [False, True, False] and not second.json()["new_stream"]
    assert second.json()["sequence"] == 1
    for sequence in (1, 5):  # repeated, skipped ahead
        r = post_video(video_server, encode(clip[:2]), stream_id="cont", sequence=sequence)
        assert_error(r, 409, "sequence_conflict")
        assert "expects sequence 2" in r.json()["error"]["message"]
    assert_error(post_video(video_server, encode(clip[:2]), sequence=0), 400, "bad_parameter")


def test_the_affinity_header_names_the_stream_too(video_server):
    clip = frames(4)
    header = {"X-Stream-ID": "by-header"}
    first = post_video(video_server, encode(clip[:2]), headers=header, sequence=0, keyframe_interval=4)
    assert first.json()["stream_id"] == "by-header" and first.json()["new_stream"]
    second = post_video(video_server, encode(clip[2:]), headers=header, stream_id="by-header", sequence=1, keyframe_interval=4)
    assert keyframes(second) == [False, False] and not second.json()["new_stream"]
    r = post_video(video_server, encode(clip[:2]), headers=header, stream_id="another", sequence=2)
    assert_error(r, 400, "bad_parameter")
    assert "name different streams" in r.json()["error"]["message"]
    assert_error(post_video(video_server, encode(clip[:2]), headers={"X-Stream-ID": "no spaces"}), 400, "bad_parameter")


def test_stream_cap_evicts_the_least_recently_used(video_server):
    data = encode(frames(2))
    for name in ("cap-a", "cap-b", "cap-c", "cap-d"):  # the server keeps 3 streams
        assert post_video(video_server, data, stream_id=name, sequence=0).status_code == 200
    assert metric(video_server, "segserve_video_streams") == 3
    assert metric(video_server, "segserve_video_stream_evictions_total", reason="capacity") >= 1
    continued = post_video(video_server, data, stream_id="cap-d", sequence=1).json()
    assert not continued["new_stream"] and not continued["stream_restarted"]
    restarts = metric(video_server, "segserve_video_stream_restarts_total")
    restarted = post_video(video_server, data, stream_id="cap-a", sequence=1, keyframe_interval=8)
    assert restarted.json()["new_stream"] and restarted.json()["stream_restarted"] and keyframes(restarted) == [True, False]
    assert metric(video_server, "segserve_video_stream_restarts_total") == restarts + 1


def test_idle_stream_is_dropped(idle_server):
    data = encode(frames(2))
    assert keyframes(post_video(idle_server, data, stream_id="idle", sequence=0, keyframe_interval=8)) == [True, False]
    until(lambda: metric(idle_server, "segserve_video_streams") == 0)  # idle timeout 0.5 s; the sweeper runs every 0.25 s
    assert metric(idle_server, "segserve_video_stream_evictions_total", reason="idle") == 1
    r = post_video(idle_server, data, stream_id="idle", sequence=1, keyframe_interval=8)
    assert r.json()["new_stream"] and r.json()["stream_restarted"] and keyframes(r) == [True, False]


def test_limits(video_server):
    data = encode(frames(4))
    assert_error(post_video(video_server, data, max_frames=3), 422, "too_many_frames")
    strided = post_video(video_server, data, max_frames=3, frame_stride=2, keyframe_interval=1)
    assert keyframes(strided) == [True, True] and [f["index"] for f in strided.json()["frames"]] == [0, 2]
    assert_error(post_video(video_server, encode(frames(17))), 422, "too_many_frames")  # server limit: 16
    assert_error(post_video(video_server, b"\x00" * 300_000), 413, "payload_too_large")
    assert_error(post_video(video_server, data, "text/plain"), 415, "unsupported_media_type")
    assert_error(post_video(video_server, data, keyframe_interval=0), 400, "bad_parameter")
    assert_error(post_video(video_server, data, stream_id="no spaces"), 400, "bad_parameter")
    assert_error(post_video(video_server, data, score_threshold=0.5), 400, "bad_parameter")  # instance models only


def test_ndjson_streams_the_head_one_line_per_frame_then_the_summary(video_server):
    r = post_video(video_server, encode(frames(5)), headers={"Accept": "application/x-ndjson"}, keyframe_interval=3)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    head, *lines, summary = [json.loads(line) for line in r.text.splitlines()]
    assert (head["model"], head["task"], head["width"], head["height"]) == (SPLIT, "semantic", WIDTH, HEIGHT)
    assert "index" not in head and "keyframes" not in head and head["new_stream"]
    assert [(f["index"], f["keyframe"]) for f in lines] == [(0, True), (1, False), (2, False), (3, True), (4, False)]
    assert all("segments" in f for f in lines)
    assert summary["keyframes"] == 2 and summary["model"] == SPLIT and "frames" not in summary
    assert summary == {**head, "keyframes": 2, "timing_ms": summary["timing_ms"]}


def test_overlay_format_draws_each_frame_as_received(video_server):
    """format=overlay: each frame at its full size with its masks blended in, the very picture
    blend_labels makes of the decoded frame and the same chunk's JSON masks."""
    data = encode(frames(3, seed=5))
    drawn = post_video(video_server, data, format="overlay", keyframe_interval=1)
    assert drawn.status_code == 200, drawn.text
    masks = post_video(video_server, data, keyframe_interval=1).json()["frames"]
    with av.open(io.BytesIO(data)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for rgb, frame, json_frame in zip(decoded, drawn.json()["frames"], masks, strict=True):
        assert set(frame) == {"index", "pts", "keyframe", "overlay"}
        expected = blend_labels(rgb, label_map(json_frame["segments"], HEIGHT, WIDTH).astype(np.uint8))
        assert base64.b64decode(frame["overlay"]) == encode_jpeg(expected)


@pytest.mark.single_process("drives the chunk decoder (prepare_video) with the test process' own pipeline")
def test_overlay_frames_are_kept_within_a_pixel_budget(video_server):
    """Overlays keep every frame at full size: a chunk over the budget is refused, not held."""
    pipeline = video_server.app.state.manager.get(SPLIT)
    data = encode(frames(4))
    limits = {"max_frames": 16, "frame_stride": 1, "max_pixels": 10**6}
    assert prepare_video(data, pipeline, **limits, max_kept_pixels=4 * HEIGHT * WIDTH).frames[3].shape == (HEIGHT, WIDTH, 3)
    with pytest.raises(TooManyPixels, match="format=overlay"):
        prepare_video(data, pipeline, **limits, max_kept_pixels=4 * HEIGHT * WIDTH - 1)
    assert prepare_video(data, pipeline, **limits).frames is None


def test_png_format(video_server):
    r = post_video(video_server, encode(frames(2)), format="png")
    for frame in r.json()["frames"]:
        labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(frame["png"]))))
        assert labels.shape == (HEIGHT, WIDTH)


def test_http_video_bench_table(video_repo, tmp_path):
    """make bench-video-http's plumbing on a tiny run: real server, real mp4 chunks, rows scored."""
    from segserve_loadtest.bench_video_http import main

    out = tmp_path / "out"
    args = ["--repository", str(video_repo), "--model", SPLIT, "--clips", "1", "--frames", "6", "--height", "72",
            "--width", "96", "--rounds", "1", "--intervals", "3", "--part-seconds", "0.1", "--no-lock", "--out", str(out)]
    assert main(args) == 0
    table = json.loads((out / "bench_video_http.json").read_text())["table"]
    assert [r["row"] for r in table] == ["per-frame (keyframe_interval=1)", "model default policy", "keyframe_interval=3"]
    assert table[0]["keyframe_share"] == 1 and table[2]["keyframe_share"] == pytest.approx(2 / 6)
    assert table[0]["speedup"] == 1 and all(r["frames_per_s"] > 0 and 0 <= r["miou"] <= 1 for r in table)  # random weights here
    assert "| keyframe_interval=3 | interval 3 | 33% |" in (out / "bench_video_http.md").read_text()
    # the engine alone and inside the server, part by part: every part ran on a keyframe, deep only on keyframes
    per_frame, interval_3 = table[0], table[2]
    assert per_frame["engine_alone_speedup"] == 1 and interval_3["engine_alone_speedup"] > 1
    # every frame also pays the codec floor, so a server could give less than the engine alone, never more
    assert per_frame["with_codecs_speedup"] == 1
    assert 1 < interval_3["with_codecs_speedup"] < interval_3["engine_alone_speedup"]
    assert all(per_frame["server_engine_ms_per_frame"][p] > 0 for p in ("shallow", "deep", "fuse"))
    assert interval_3["server_engine_ms_per_frame"]["deep"] < per_frame["server_engine_ms_per_frame"]["deep"]


def test_video_bench_table(video_repo, capsys):
    from segserve_models.video_bench import main

    args = ["--repository", str(video_repo), "--model", CORRECTED, "--clips", "1", "--frames", "4", "--size", "96x128",
            "--intervals", "1,2", "--repeats", "1", "--no-correction"]
    assert main(args) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "policy" not in line]
    assert [row[0] for row in rows] == [
        "| per-frame (full model)",
        "| k = 1 (split, deep on every frame)",
        "| k = 2, corrected",
        "| k = 2, no correction",
        "| adaptive (threshold 1.7, max interval 8), corrected",
        "| adaptive (threshold 1.7, max interval 8), no correction",
    ]
    assert rows[1][3] == "+0.00"  # the split with deep features on every frame is the full model
    assert rows[2][1] == rows[3][1] == "50%"


def test_skip_existing_reexports_when_the_bundled_correction_changed(tmp_path):
    from segserve.cli import main as segserve

    args = ["export", "--model", "lraspp_mobilenet_v3_large", "--name", "shapes", "--weights", "bundled:shapes_lraspp",
            "--input-size", "64x64", "--video-split", "--repository", str(tmp_path), "--skip-existing"]
    assert segserve(args) == 0
    config = load_config(tmp_path / "shapes")
    assert config.parameters["video"]["correction"]["file"] == "shapes_lraspp_video.pth"
    assert (tmp_path / "shapes" / "1" / "video" / "correct" / "model.onnx").is_file()
    assert segserve(args) == 0 and not (tmp_path / "shapes" / "2").exists()  # up to date: skipped
    # an export made before the correction existed (or with another one) is stale
    del config.parameters["video"]["correction"]
    config.dump(tmp_path / "shapes" / "config.yaml")
    assert segserve(args) == 0
    assert (tmp_path / "shapes" / "2" / "video" / "correct" / "model.onnx").is_file()


def test_models_list_the_video_parts_with_their_state(video_server):
    models = {m["name"]: m for m in video_server.client.get("/v1/models").json()["models"]}
    split = models[SPLIT]["parts"]
    assert [p["name"] for p in split] == ["video/shallow", "video/deep", "video/fuse"]
    assert all(p["state"] == "READY" and p["backend"] == "onnxruntime" and p["device"] for p in split)
    assert [p["name"] for p in models[CORRECTED]["parts"]][-1] == "video/correct"
    assert models[PLAIN]["parts"] == []
    broken = models[BROKEN]
    assert broken["state"] == "READY"  # images still serve; its video runs frame by frame
    assert broken["parts"] and all(p["state"] == "UNAVAILABLE" and p["reason"] for p in broken["parts"])
