"""The committed shape models: intact, loadable into the zoo, and still accurate.

Accuracy floors are the held-out figures measured after training (recorded in each
checkpoint's "train" entry) minus a margin, on a small held-out set so this stays fast.
"""

import hashlib

import pytest
import torch

from segserve.graphs import zoo
from segserve_models.synthetic import CLASSES
from segserve_models.synthetic.keypoints import KEYPOINT_CLASSES, KEYPOINT_NAMES, KEYPOINT_SKELETON, NUM_KEYPOINTS
from segserve_models.train import (
    CHECKPOINT_DIR,
    SEMANTIC_INPUT,
    _torch_setup,
    evaluate_instance,
    evaluate_semantic,
    held_out_seeds,
    save_checkpoint,
    train_instance,
    train_keypoints,
    train_semantic,
)
from segserve_models.video_correction import ARCHITECTURE, KeyframeClips, base_net
from segserve_models.video_correction import save as save_correction
from segserve_models.video_correction import train as train_correction
from segserve_models.video_split import SplitNet, load_correction
from segserve_models.weights import load_checkpoint

CHECKPOINTS = {
    "shapes_lraspp.pth": "lraspp_mobilenet_v3_large",
    "shapes_maskrcnn.pth": "maskrcnn_mobilenet_v3_large_fpn",
    "shapes_keypointrcnn.pth": "keypointrcnn_mobilenet_v3_large_fpn",
}
KEYPOINTS = "shapes_keypointrcnn.pth"  # the keypoint model: its own classes, K = 12 keypoints
VIDEO_CORRECTION = "shapes_lraspp_video.pth"  # models/video_correction.py, for shapes_lraspp.pth
SEMANTIC_MIN_MEAN_IOU = 0.50  # measured 0.570 on held_out_seeds(16) (0.600 on 64)
SEMANTIC_MIN_PIXEL_ACCURACY = 0.92  # measured 0.946 on held_out_seeds(16)
INSTANCE_MIN_MASK_AP50 = 0.45  # measured 0.508 on held_out_seeds(4) (0.648 on 50)


def load_model(filename: str) -> torch.nn.Module:
    arch = zoo.get(CHECKPOINTS[filename])
    net = arch.build(len(KEYPOINT_CLASSES), num_keypoints=NUM_KEYPOINTS) if filename == KEYPOINTS else arch.build(len(CLASSES))
    net.load_state_dict(load_checkpoint(CHECKPOINT_DIR / filename), strict=True)
    return net.eval()


@pytest.fixture(autouse=True, scope="module")
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_sha256sums_match():
    listed = {}
    for line in (CHECKPOINT_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    assert set(listed) == {*CHECKPOINTS, VIDEO_CORRECTION}
    for name, digest in listed.items():
        assert hashlib.sha256((CHECKPOINT_DIR / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("filename", sorted(CHECKPOINTS))
def test_checkpoint_metadata(filename):
    checkpoint = torch.load(CHECKPOINT_DIR / filename, map_location="cpu", weights_only=True)
    if filename == KEYPOINTS:
        assert checkpoint["classes"] == KEYPOINT_CLASSES
        assert checkpoint["keypoints"] == KEYPOINT_NAMES and checkpoint["skeleton"] == KEYPOINT_SKELETON
    else:
        assert checkpoint["classes"] == CLASSES
    assert checkpoint["architecture"] == CHECKPOINTS[filename]
    assert checkpoint["train"]["steps"] > 0 and "held_out" in checkpoint["train"]


@pytest.mark.parametrize("filename", sorted(CHECKPOINTS))
def test_loads_strictly_into_float32_zoo_architecture(filename):
    net = load_model(filename)
    # float16-stored checkpoints are cast back on load_state_dict's copy
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_semantic_model_accuracy():
    metrics = evaluate_semantic(load_model("shapes_lraspp.pth"), held_out_seeds(16), SEMANTIC_INPUT)
    assert metrics["mean_iou"] >= SEMANTIC_MIN_MEAN_IOU, metrics
    assert metrics["pixel_accuracy"] >= SEMANTIC_MIN_PIXEL_ACCURACY, metrics


def test_instance_model_accuracy():
    metrics = evaluate_instance(load_model("shapes_maskrcnn.pth"), held_out_seeds(4))
    assert metrics["mask_ap50"] >= INSTANCE_MIN_MASK_AP50, metrics


@pytest.mark.parametrize("task", ["semantic", "instance", "keypoints"])
def test_training_is_byte_reproducible(task, tmp_path):
    """`make train` promises: same seed and steps -> the same checkpoint bytes (so the
    committed sha256s can be reproduced). Two short runs must agree to the bit."""
    digests = []
    for run in range(2):
        _torch_setup(0)
        if task == "semantic":
            net, (info, _) = train_semantic(2, None, 0, size=64, batch=2)
        elif task == "instance":
            net, (info, _) = train_instance(2, None, 0, batch=1)
        else:
            net, (info, _) = train_keypoints(2, None, 0, batch=1)
        path = tmp_path / str(run) / "model.pth"  # same name: torch.save puts the file's stem in the archive
        save_checkpoint(path, net, "any", info)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_video_correction_fits_the_bundled_semantic_model():
    """The committed correction was trained for the committed LRASPP weights (fingerprint)."""
    correction = load_correction(CHECKPOINT_DIR / VIDEO_CORRECTION, base_net())
    assert correction.out.weight.abs().sum() > 0  # trained: the output layer starts at zero


def test_video_correction_training_is_byte_reproducible(tmp_path):
    net = base_net()
    split = SplitNet(ARCHITECTURE, net)
    digests = []
    for run in range(2):
        data = KeyframeClips(split, range(5, 7), gaps=4, size=64)
        correction, _ = train_correction(split, data, steps=3, seed=0)
        path = tmp_path / str(run) / VIDEO_CORRECTION  # same name: torch.save writes the name into the file
        path.parent.mkdir()
        save_correction(path, correction, net, {"steps": 3})
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
