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
    task: str  # "semantic" | "instance"
    build: Callable[[int], nn.Module]  # num_classes -> randomly initialised network
    weights: object | None = None  # torchvision Weights enum member for `pretrained`
    default_input: tuple[int, int] = (512, 512)
    default_max_batch: int = 8
    # state_dict key prefixes the serving graph drops (auxiliary training heads)
    drop_prefixes: tuple[str, ...] = field(default=("aux_classifier.",))

    @property
    def pretrained_classes(self) -> list[str] | None:
        return list(self.weights.meta["categories"]) if self.weights is not None else None


ARCHITECTURES: dict[str, Architecture] = {}


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


def strip_training_heads(arch: Architecture, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(arch.drop_prefixes)}


# --- instance segmentation -------------------------------------------------------------

def _maskrcnn(fn: Callable[..., nn.Module]) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return fn(weights=None, weights_backbone=None, num_classes=num_classes)

    return build


def build_maskrcnn_mobilenet_v3_large_fpn(num_classes: int) -> nn.Module:
    """A light Mask R-CNN (MobileNetV3-Large + FPN), the instance twin of torchvision's
    fasterrcnn_mobilenet_v3_large_fpn: small enough to train and serve on 2 CPU cores.

    Narrower than torchvision's defaults (128-channel FPN, 256-wide box head, 2-conv mask
    head), which keeps the checkpoint ~4x smaller and training ~2x faster, and uses plain
    BatchNorm (torchvision freezes it, which only works on top of pretrained weights).
    """
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    fpn_channels, box_width, mask_width = 128, 256, 128
    features = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d).features
    # FPN on the last two stages (strides 16 and 32) plus a max-pooled level, as torchvision does
    stage_ends = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]
    returned = stage_ends[-2:]
    backbone = BackboneWithFPN(
        features,
        return_layers={str(index): str(level) for level, index in enumerate(returned)},
        in_channels_list=[features[index].out_channels for index in returned],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(((16, 32, 64, 128, 256),) * 3, ((0.5, 1.0, 2.0),) * 3)
    return MaskRCNN(
        backbone,
        num_classes=None,  # set by the predictors below
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_width),
        box_predictor=FastRCNNPredictor(box_width, num_classes),
        mask_head=MaskRCNNHeads(fpn_channels, (mask_width, mask_width), 1),
        mask_predictor=MaskRCNNPredictor(mask_width, mask_width, num_classes),
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


register(
    Architecture(
        "maskrcnn_resnet50_fpn",
        "instance",
        _maskrcnn(tvdet.maskrcnn_resnet50_fpn),
        tvdet.MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
        default_input=(800, 1344),
        default_max_batch=4,
        drop_prefixes=(),
    )
)
register(
    Architecture(
        "maskrcnn_resnet50_fpn_v2",
        "instance",
        _maskrcnn(tvdet.maskrcnn_resnet50_fpn_v2),
        tvdet.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
        default_input=(800, 1344),
        default_max_batch=4,
        drop_prefixes=(),
    )
)
register(
    Architecture(
        "maskrcnn_mobilenet_v3_large_fpn",
        "instance",
        build_maskrcnn_mobilenet_v3_large_fpn,
        None,
        default_input=(320, 512),
        default_max_batch=8,
        drop_prefixes=(),
    )
)
