"""Keypoint R-CNN on the Mask R-CNN split: parity with torchvision eager on random weights,
keypoints mapped back as torchvision maps them.

The light variant (MobileNetV3-FPN) at a small resize (min 160 / max 256), exported once
(with the exporter's own parity check); the ResNet-50 architecture tiny, backbone module +
heads, so the file stays fast on 2 CPU cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import resize_keypoints

from segserve.codecs.rcnn_input import ImageMeta, scale_keypoints
from segserve.contract.artifacts import BACKBONE_ARTIFACT, WEIGHTS_ARTIFACT, WHOLE_GRAPH_ARTIFACT
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import KeypointSpec, ModelConfig, Task
from segserve.graphs import zoo
from segserve.pipelines.instance.runner import KeypointSplitRunner
from segserve_models.instance.parity import compare_all, eager_keypoint_instances
from segserve_models.instance.random_init import lively_random_init
from tests.test_instance_model import (  # noqa: F401 (one_thread: the autouse fixture)
    CUT,
    RESIZED,
    UNRESIZED,
    image,
    one_thread,
    small_export_fixtures,
    split_module_runner,
    split_runner,
)

ARCH = "keypointrcnn_mobilenet_v3_large_fpn"
CLASSES = ["__background__", "person", "robot"]


exported, detector = small_export_fixtures(ARCH, 5, CLASSES)


def test_export_writes_the_split_and_the_keypoints_and_passes_parity(exported):
    version_dir, config = exported
    assert (version_dir / BACKBONE_ARTIFACT).is_file() and (version_dir / WEIGHTS_ARTIFACT).is_file()
    assert not (version_dir / WHOLE_GRAPH_ARTIFACT).exists()  # keypoint models: the split path only
    assert config.task == Task.keypoints and config.classes == CLASSES
    assert config.keypoints.names == list(zoo.COCO_KEYPOINT_NAMES)  # random weights: the architecture's
    assert config.keypoints.skeleton == [tuple(p) for p in zoo.COCO_SKELETON]
    parity = json.loads((version_dir / "export.json").read_text())["parity"]
    assert set(parity) == {"split_onnxruntime_vs_eager", "split_torch_vs_eager"}
    for report in parity.values():
        assert report["ok"] and report["matched"] == report["reference"] > 0, report
        assert report["max_keypoint_diff"] <= 0.05, report


# resized up and down (extreme aspect ratio), and one torchvision does not resize; batched together
SIZES = RESIZED[:1] + RESIZED[2:] + UNRESIZED[:1]


@pytest.fixture(scope="module")
def eager_case(detector):
    images = [image(h, w, seed=60 + i) for i, (h, w) in enumerate(SIZES)]
    return images, eager_keypoint_instances(detector, images, 0.0)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_split_path_matches_torchvision_eager(exported, eager_case, backend):
    images, reference = eager_case
    served = split_runner(exported, backend, KeypointSplitRunner)(images, score_threshold=0.0)
    result = compare_all(reference, served, CUT, 100)
    assert result.ok and result.matched >= 0.95 * result.reference > 0, result
    assert result.max_box_diff <= 0.01 and result.max_score_diff <= 1e-4 and result.max_keypoint_diff <= 0.05, result
    for (h, w), found in zip(SIZES, served):
        for inst in found:  # K = 17 triplets at the original size, inside the (clipped) box's image
            points = np.reshape(inst["keypoints"], (-1, 3))
            assert points.shape == (17, 3) and len(inst["keypoint_scores"]) == 17
            assert (points[:, 0] <= w + 1).all() and (points[:, 1] <= h + 1).all() and (points[:, :2] >= -1).all()


def test_resnet50_keypoint_split_matches_eager():
    """torchvision's COCO architecture, tiny: backbone module + heads vs eager."""
    torch.manual_seed(0)
    net = lively_random_init(zoo.get("keypointrcnn_resnet50_fpn").build(2, num_keypoints=17)).eval()
    net.transform.min_size, net.transform.max_size = (128,), 160
    net.rpn._post_nms_top_n["testing"] = 100
    net.roi_heads.detections_per_img = 4  # the 8x512 keypoint head is most of the time
    run = split_module_runner(net, InstanceParameters(min_size=128, max_size=160, max_instances=4), KeypointSplitRunner)
    images = [image(97, 141, seed=70)]
    result = compare_all(eager_keypoint_instances(net, images, 0.0), run(images, score_threshold=0.0), CUT, 4)
    assert result.ok and result.matched == result.reference > 0 and result.max_keypoint_diff <= 0.05, result


@pytest.mark.parametrize("original,resized", [((480, 640), (256, 341)), ((97, 131), (160, 216)), ((1080, 1920), (252, 448))])
def test_keypoints_scale_back_exactly_as_torchvision(original, resized):
    points = torch.rand(5, 17, 3, generator=torch.Generator().manual_seed(1)) * torch.tensor([resized[1], resized[0], 1])
    expected = resize_keypoints(points, resized, original).numpy()
    got = scale_keypoints(points.numpy(), ImageMeta(original_size=original, resized_size=resized))
    assert np.array_equal(got, expected)


def test_keypoint_config_is_checked():
    spec = KeypointSpec(names=["a", "b"], skeleton=[(1, 2)])
    ModelConfig(name="k", task=Task.keypoints, classes=["bg", "x"], keypoints=spec)
    with pytest.raises(ValueError, match="keypoints"):
        ModelConfig(name="k", task=Task.keypoints, classes=["bg", "x"])
    with pytest.raises(ValueError, match="keypoints"):
        ModelConfig(name="k", task=Task.instance, classes=["bg", "x"], keypoints=spec)
    with pytest.raises(ValueError, match="1-based"):
        KeypointSpec(names=["a", "b"], skeleton=[(0, 1)])
