"""Architectures segserve knows how to build, export and rebuild for the torch backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torchvision.models import detection as tvdet
from torchvision.models import segmentation as tvseg


@dataclass(frozen=True)
class Architecture:
    name: str
    task: str  # "semantic" | "instance" | "keypoints"
    # num_classes (keypoints: and num_keypoints=K) -> randomly initialised network
    build: Callable[..., nn.Module]
    weights: object | None = None  # torchvision Weights enum member for `pretrained`
    default_input: tuple[int, int] = (512, 512)
    default_max_batch: int = 8
    # state_dict key prefixes the serving graph drops (auxiliary training heads)
    drop_prefixes: tuple[str, ...] = field(default=("aux_classifier.",))
    # keypoint models: the names and skeleton (1-based pairs, COCO's convention) of their
    # default keypoints, for weights that do not say (random ones)
    keypoint_names: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()

    @property
    def pretrained_classes(self) -> list[str] | None:
        return list(self.weights.meta["categories"]) if self.weights is not None else None


ARCHITECTURES: dict[str, Architecture] = {}

# COCO's person keypoints (torchvision's KeypointRCNN_ResNet50_FPN_Weights meta) and the
# skeleton of COCO's person category (person_keypoints_*.json), 1-based.
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10), (9, 11),
    (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def get(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None


def _semantic(fn: Callable[..., nn.Module], **extra) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, **extra)

    return build


register(
    Architecture(
        "lraspp_mobilenet_v3_large",
        "semantic",
        _semantic(tvseg.lraspp_mobilenet_v3_large),
        tvseg.LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
        default_max_batch=8,
    )
)
register(
    Architecture(
        "deeplabv3_mobilenet_v3_large",
        "semantic",
        _semantic(tvseg.deeplabv3_mobilenet_v3_large, aux_loss=False),
        tvseg.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
    )
)
register(
    Architecture(
        "deeplabv3_resnet50",
        "semantic",
        _semantic(tvseg.deeplabv3_resnet50, aux_loss=False),
        tvseg.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
        default_max_batch=4,
    )
)
register(
    Architecture(
        "fcn_resnet50",
        "semantic",
        _semantic(tvseg.fcn_resnet50, aux_loss=False),
        tvseg.FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
        default_max_batch=4,
    )
)


def build_for(config) -> nn.Module:
    """A randomly initialised network for a ModelConfig: its architecture, classes and (keypoint
    models) keypoints."""
    arch = get(config.architecture)
    if arch.task == "keypoints":
        return arch.build(len(config.classes), num_keypoints=len(config.keypoints.names))
    return arch.build(len(config.classes))


def strip_training_heads(arch: Architecture, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(arch.drop_prefixes)}


# --- instance segmentation -------------------------------------------------------------

def _maskrcnn(fn: Callable[..., nn.Module]) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return fn(weights=None, weights_backbone=None, num_classes=num_classes)

    return build


FPN_CHANNELS, BOX_WIDTH, HEAD_WIDTH = 128, 256, 128  # the light detectors' widths


def _light_rcnn_parts() -> dict:
    """What the light MobileNetV3-FPN detectors share (Mask R-CNN and Keypoint R-CNN): body
    + FPN, anchors, box head and the resize/proposal settings, as GeneralizedRCNN kwargs."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import TwoMLPHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    features = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d).features
    # FPN on the last two stages (strides 16 and 32) plus a max-pooled level, as torchvision does
    stage_ends = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]
    returned = stage_ends[-2:]
    backbone = BackboneWithFPN(
        features,
        return_layers={str(index): str(level) for level, index in enumerate(returned)},
        in_channels_list=[features[index].out_channels for index in returned],
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    return dict(
        backbone=backbone,
        num_classes=None,  # set by the predictors
        rpn_anchor_generator=AnchorGenerator(((16, 32, 64, 128, 256),) * 3, ((0.5, 1.0, 2.0),) * 3),
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, BOX_WIDTH),
        # shapes are >= ~30 px across at this scale, and it keeps CPU training affordable
        min_size=256,
        max_size=448,
        # fewer proposals and sampled RoIs than the COCO defaults: scenes hold < 10 objects
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
    )


def build_maskrcnn_mobilenet_v3_large_fpn(num_classes: int) -> nn.Module:
    """A light Mask R-CNN (MobileNetV3-Large + FPN), the instance twin of torchvision's
    fasterrcnn_mobilenet_v3_large_fpn: small enough to train and serve on 2 CPU cores.

    Narrower than torchvision's defaults (128-channel FPN, 256-wide box head, 2-conv mask
    head), which keeps the checkpoint ~4x smaller and training ~2x faster, and uses plain
    BatchNorm (torchvision freezes it, which only works on top of pretrained weights).
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    parts = _light_rcnn_parts()  # first: the random init draws in the order the modules are made
    return MaskRCNN(
        box_predictor=FastRCNNPredictor(BOX_WIDTH, num_classes),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, (HEAD_WIDTH, HEAD_WIDTH), 1),
        mask_predictor=MaskRCNNPredictor(HEAD_WIDTH, HEAD_WIDTH, num_classes),
        **parts,
    )


def build_keypointrcnn_mobilenet_v3_large_fpn(num_classes: int, num_keypoints: int = 17) -> nn.Module:
    """The light Keypoint R-CNN: the light Mask R-CNN's body, FPN, anchors and box head, and
    torchvision's keypoint head at a quarter of its width and half its depth (4 convs of 128
    channels instead of 8 of 512: ~1/60 of its compute per RoI), same 56x56 heatmaps."""
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor

    parts = _light_rcnn_parts()
    return KeypointRCNN(
        box_predictor=FastRCNNPredictor(BOX_WIDTH, num_classes),
        keypoint_head=KeypointRCNNHeads(FPN_CHANNELS, (HEAD_WIDTH,) * 4),
        keypoint_predictor=KeypointRCNNPredictor(HEAD_WIDTH, num_keypoints),
        **parts,
    )


def _keypointrcnn(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(num_classes: int, num_keypoints: int = 17) -> nn.Module:
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, num_keypoints=num_keypoints)

    return build


def register_rcnn(name: str, task: str, build: Callable[..., nn.Module], weights, light: bool = False, **extra) -> None:
    """An R-CNN (Mask / Keypoint): it resizes by itself, so the input is its canvas; the
    ResNet-50 ones at torchvision's 800/1333 with small batches, the light ones smaller."""
    register(
        Architecture(
            name, task, build, weights, default_input=(320, 512) if light else (800, 1344),
            default_max_batch=8 if light else 4, drop_prefixes=(), **extra,
        )
    )


register_rcnn("maskrcnn_resnet50_fpn", "instance", _maskrcnn(tvdet.maskrcnn_resnet50_fpn), tvdet.MaskRCNN_ResNet50_FPN_Weights.COCO_V1)
register_rcnn(
    "maskrcnn_resnet50_fpn_v2", "instance", _maskrcnn(tvdet.maskrcnn_resnet50_fpn_v2), tvdet.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
)
register_rcnn("maskrcnn_mobilenet_v3_large_fpn", "instance", build_maskrcnn_mobilenet_v3_large_fpn, None, light=True)


# --- keypoints (Keypoint R-CNN: the same split as Mask R-CNN) ---------------------------

COCO_PERSON = {"keypoint_names": COCO_KEYPOINT_NAMES, "skeleton": COCO_SKELETON}  # random weights: K = 17, COCO's
register_rcnn(
    "keypointrcnn_resnet50_fpn", "keypoints", _keypointrcnn(tvdet.keypointrcnn_resnet50_fpn),
    tvdet.KeypointRCNN_ResNet50_FPN_Weights.COCO_V1, **COCO_PERSON,
)
register_rcnn("keypointrcnn_mobilenet_v3_large_fpn", "keypoints", build_keypointrcnn_mobilenet_v3_large_fpn, None, light=True,
              **COCO_PERSON)
