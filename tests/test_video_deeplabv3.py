"""Video: the DeepLabV3-MobileNetV3 split (issue 16, item 3) exported and served on
``/segment/video`` by the real app in this process (tests/servers.py), on ONNX Runtime.

The model has random weights with BatchNorm statistics measured on synthetic scenes
(segserve_models.calibration: uncalibrated, it labels every pixel with one class and every
comparison would agree trivially), 64x64 input, one engine instance: cheap on 2 CPU cores.
One copy has the plain split (frames between keyframes reuse the keyframe's head output),
one a correction (a real one, trained two steps, with a random output layer so that it
visibly changes labels), as tests/test_video.py does for LRASPP.

Real process: none here; nothing in the video API depends on the socket or the process.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from segserve.codecs.geometry import Letterbox
from segserve.contract.model_config import load_config
from segserve.contract.video import DEFAULT_KEYFRAME_THRESHOLD, DEFAULT_MAX_KEYFRAME_INTERVAL
from segserve.graphs import zoo
from segserve_models.calibration import calibrated_random, synthetic_batch
from segserve_models.export import export_model, sample_images
from segserve_models.video_split import export_video_split
from segserve_models.weights import WeightsSpec
from tests.servers import app_server
from tests.test_video import frames, keyframes, label_map, png, random_correction

ARCH = "deeplabv3_mobilenet_v3_large"
PLAIN, CORRECTED = "deeplabv3_video", "deeplabv3_corrected"
INPUT = (64, 64)
HEIGHT, WIDTH = 96, 128  # tests/test_video.py's clips: letterboxed to 48x64 of the input


@pytest.fixture(scope="module")
def deeplab_repo(tmp_path_factory):
    """One export with the split and its correction; the plain model is a copy whose config
    leaves the correction out (the same shallow, deep and fuse graphs)."""
    repo = tmp_path_factory.mktemp("deeplab_video")
    weights = repo.parent / "deeplabv3-calibrated.pth"
    net = calibrated_random(ARCH, synthetic_batch(4, *INPUT))
    torch.save({"model": net.state_dict(), "classes": zoo.get(ARCH).pretrained_classes}, weights)
    export_model(ARCH, repo, WeightsSpec.parse(str(weights)), name=CORRECTED, input_size=INPUT, max_batch_size=4, instances=1,
                 progress=False)
    export_video_split(repo, CORRECTED, correction=random_correction(repo / CORRECTED, tmp_path_factory.mktemp("correction")))
    shutil.copytree(repo / CORRECTED, repo / PLAIN)
    config = load_config(repo / PLAIN)
    video = config.parameters["video"]
    del video["correction"]
    video["keyframe_threshold"], video["max_keyframe_interval"] = DEFAULT_KEYFRAME_THRESHOLD, DEFAULT_MAX_KEYFRAME_INTERVAL
    config.model_copy(update={"name": PLAIN}).dump(repo / PLAIN / "config.yaml")
    return repo


@pytest.fixture(scope="module")
def deeplab_server(deeplab_repo):
    with app_server(deeplab_repo) as server:
        yield server


def sessions(version_dir, parts=("shallow", "deep", "fuse")):
    import onnxruntime as ort

    return {p: ort.InferenceSession(str(version_dir / "video" / p / "model.onnx")).run for p in parts}


def letterboxed(clip: list[np.ndarray], config) -> tuple[np.ndarray, Letterbox]:
    box = Letterbox.fit(HEIGHT, WIDTH, config.input)
    return np.stack([box.apply(image, config.input.pad_value) for image in clip]), box


def post(server, model, clip: list[np.ndarray], **params):
    """The frames as multipart PNGs: lossless, so the parts can be run on the same pixels here."""
    files = [("frame", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(clip)]
    return server.client.post("/segment/video", params={"model": model, **params}, files=files, timeout=60)


def test_the_split_is_deeplabv3s_and_its_keyframe_path_is_the_full_model(deeplab_repo):
    import onnxruntime as ort

    config = load_config(deeplab_repo / PLAIN)
    assert config.parameters["video"]["split"] == "deeplabv3"
    version = deeplab_repo / PLAIN / "1"
    # DeepLabV3's head has no low-level branch: fuse takes the cached deep features alone
    assert [i.name for i in onnx.load(str(version / "video" / "fuse" / "model.onnx")).graph.input] == ["deep"]
    run = sessions(version)
    images = sample_images(3, *INPUT, seed=5).numpy()
    (low,) = run["shallow"](None, {"images": images})
    (deep,) = run["deep"](None, {"low": low})
    assert low.shape == (3, 40, 8, 8) and deep.shape == (3, 256, 4, 4)  # strides 8 and 16
    (split_labels,) = run["fuse"](None, {"deep": deep})
    (full_labels,) = ort.InferenceSession(str(version / "model.onnx")).run(None, {"images": images})
    assert len(np.unique(full_labels)) > 1  # calibrated: not one class everywhere
    assert (split_labels == full_labels).mean() >= 0.999
    record = json.loads((version / "video" / "export.json").read_text())
    parity = record["parity_keyframe_vs_full"]
    assert parity["label_agreement"] >= 0.999 and parity["max_abs_diff"] <= 1e-3 * max(1.0, parity["max_abs_logit"])
    assert record["parity_correct_vs_torch"]["label_agreement"] >= 0.999


def test_segment_video_reuses_the_keyframes_head_output(deeplab_server, deeplab_repo):
    clip = frames(4, seed=3)
    r = post(deeplab_server, PLAIN, clip, keyframe_interval=2)
    assert keyframes(r) == [True, False, True, False] and r.json()["keyframe_policy"]["split"]
    served = [label_map(f["segments"], HEIGHT, WIDTH) for f in r.json()["frames"]]
    assert all((labels >= 0).all() for labels in served)  # every pixel in exactly one mask
    # keyframes are the full model on their frame; the frame after one repeats it (no correction)
    import onnxruntime as ort

    config = load_config(deeplab_repo / PLAIN)
    images, box = letterboxed(clip, config)
    (full,) = ort.InferenceSession(str(deeplab_repo / PLAIN / "1" / "model.onnx")).run(None, {"images": images})
    for i in (0, 2):
        assert (served[i] == box.restore(full[i])).mean() >= 0.999
        assert (served[i + 1] == served[i]).all()
    assert (box.restore(full[1]) != served[1]).any()  # the model itself would have labelled frame 1 otherwise


def test_non_keyframes_use_the_correction_when_it_has_one(deeplab_server, deeplab_repo):
    clip = frames(3, seed=4)
    r = post(deeplab_server, CORRECTED, clip, keyframe_interval=3)
    assert keyframes(r) == [True, False, False]
    run = sessions(deeplab_repo / CORRECTED / "1", ("shallow", "deep", "fuse", "correct"))
    images, box = letterboxed(clip, load_config(deeplab_repo / CORRECTED))
    (low,) = run["shallow"](None, {"images": images})
    (deep,) = run["deep"](None, {"low": low[:1]})
    (stale,) = run["fuse"](None, {"deep": deep})
    for i, frame in enumerate(r.json()["frames"][1:], start=1):
        (corrected,) = run["correct"](None, {"low": low[i : i + 1], "deep": deep, "key_low": low[:1]})
        assert (corrected != stale).mean() > 0.05  # the correction changes labels: the check below can tell
        assert (label_map(frame["segments"], HEIGHT, WIDTH) == box.restore(corrected[0])).mean() >= 0.999


def test_models_list_the_deeplabv3_video_parts(deeplab_server):
    models = {m["name"]: m for m in deeplab_server.client.get("/v1/models").json()["models"]}
    assert models[PLAIN]["architecture"] == ARCH and models[PLAIN]["state"] == "READY"
    parts = models[PLAIN]["parts"]
    assert [p["name"] for p in parts] == ["video/shallow", "video/deep", "video/fuse"]
    assert all(p["state"] == "READY" and p["backend"] == "onnxruntime" and p["device"] for p in parts)
    assert [p["name"] for p in models[CORRECTED]["parts"]][-1] == "video/correct"


def test_video_bench_runs_deeplabv3(deeplab_repo, capsys):
    from segserve_models.video_bench import main

    args = ["--repository", str(deeplab_repo), "--model", PLAIN, "--clips", "1", "--frames", "4", "--size", "96x128",
            "--intervals", "1,2", "--repeats", "0"]  # untimed
    assert main(args) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "policy" not in line]
    assert [row[0] for row in rows] == ["| per-frame (full model)", "| k = 1 (split, deep on every frame)", "| k = 2",
                                        "| adaptive (threshold 1, max interval 16)"]
    for row in rows[:2]:  # the split with deep features on every frame is the full model
        assert row[3] == "+0.00" and row[7] == "100.00%" and row[8] == "100.00 |"
    assert rows[2][1] == "50%" and rows[2][5] == rows[2][6] == "-"
