"""Mask R-CNN (and Keypoint R-CNN) cut in two where batching stops being easy.

``MaskRCNNBackbone`` (normalisation + ResNet/MobileNet body + FPN) is a plain dense graph:
it exports to ONNX with dynamic batch/height/width and runs batched on any engine.
``MaskRCNNHeads`` (RPN, RoI heads: NMS, RoIAlign, data-dependent shapes) stays in torch,
where torchvision's ops are exact and run on CUDA when there is one. Both hold the very
modules of one torchvision ``MaskRCNN``, so the split adds no arithmetic of its own.

Keypoint R-CNN is the same ``GeneralizedRCNN`` (transform, backbone, RPN) with a keypoint
branch in its RoI heads instead of the mask branch: the same two modules split it, and
``Detections`` carries whichever branch the detector has.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList

from segserve.contract.artifacts import WEIGHTS_ARTIFACT
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import ModelConfig
from segserve.graphs import zoo
from segserve.graphs.serving import Normalize

# FPN level names ("0", "1", ..., "pool") become "fpn_0", ... as tensor names.
FEATURE_PREFIX = "fpn_"
BACKBONE_PREFIX = "backbone."


class MaskRCNNBackbone(nn.Module):
    """NCHW canvas of 0..255 pixels (uint8 or float32) + each image's (h, w) in it -> FPN
    feature maps, one output per level, batch on axis 0.

    torchvision pads its batch *after* normalising, with 0; no uint8 pad value normalises
    to exactly 0 and the difference reaches the detections, so the graph zeroes
    everything outside each image itself: the canvas padding can hold anything.
    """

    input_names = ("images", "image_sizes")

    def __init__(self, detector: GeneralizedRCNN):
        super().__init__()
        transform = detector.transform
        self.normalize = Normalize(transform.image_mean, transform.image_std)
        self.backbone = detector.backbone
        with torch.no_grad():  # level names depend on the body; ask it once
            levels = self.backbone.eval()(torch.zeros(1, 3, 64, 64)).keys()
        self.output_names = tuple(FEATURE_PREFIX + name for name in levels)

    def half_compute(self) -> "MaskRCNNBackbone":
        self.backbone.half()
        self.normalize.half()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Takes the whole detector's state_dict (the version's weights.pt): the rpn/roi_heads
        entries belong to MaskRCNNHeads, so only ``backbone.*`` is loaded here."""
        own = {k: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
        return super().load_state_dict(own, strict=strict, assign=assign)

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.normalize(images)
        rows = torch.arange(x.shape[2], device=x.device, dtype=image_sizes.dtype)
        cols = torch.arange(x.shape[3], device=x.device, dtype=image_sizes.dtype)
        heights, widths = image_sizes[:, 0, None, None], image_sizes[:, 1, None, None]
        inside = (rows[None, :, None] < heights) & (cols[None, None, :] < widths)
        return tuple(self.backbone(x * inside[:, None].to(x.dtype)).values())


@dataclass
class Detections:
    """One image's detections in network-input coordinates (the resized image), before paste."""

    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1
    labels: np.ndarray  # (N,) int64 class ids (index into the config's classes)
    scores: np.ndarray  # (N,) float32, descending
    masks: np.ndarray | None = None  # (N, M, M) float32 mask probabilities inside each box (M=28); Mask R-CNN
    keypoints: np.ndarray | None = None  # (N, K, 3) float32 x, y, visibility (torchvision: 1); Keypoint R-CNN
    keypoint_scores: np.ndarray | None = None  # (N, K) float32 heatmap logits at each keypoint


class MaskRCNNHeads(nn.Module):
    """FPN features of a batch + each image's resized size -> per-image Detections.

    Thresholds are the detector's RoI-head settings: ``score_thresh`` drops boxes before
    NMS (as torchvision does), ``detections_per_img`` caps the survivors.
    """

    def __init__(self, detector: GeneralizedRCNN, score_thresh: float | None = None, detections_per_img: int | None = None):
        super().__init__()
        self.rpn = detector.rpn
        self.roi_heads = detector.roi_heads
        if score_thresh is not None:
            self.roi_heads.score_thresh = score_thresh
        if detections_per_img is not None:
            self.roi_heads.detections_per_img = detections_per_img

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def forward(
        self,
        features: dict[str, np.ndarray | torch.Tensor],
        image_sizes: list[tuple[int, int]],
        canvas_size: tuple[int, int],
    ) -> list[Detections]:
        """``features``: the backbone's outputs by name; ``image_sizes``: (h, w) of each resized
        image inside the canvas; ``canvas_size``: (H, W) of the batch the backbone ran on."""
        device = self.device
        maps = OrderedDict(
            (name.removeprefix(FEATURE_PREFIX), torch.as_tensor(value).to(device, torch.float32))
            for name, value in features.items()
        )
        batch = next(iter(maps.values())).shape[0]
        if batch != len(image_sizes):
            raise ValueError(f"{batch} feature maps but {len(image_sizes)} image sizes")
        # The anchor generator reads only the canvas shape from the image tensor: a
        # zero-stride view stands in for the pixels the heads never touch.
        canvas = torch.empty((), device=device).expand(batch, 3, *canvas_size)
        images = ImageList(canvas, [tuple(map(int, s)) for s in image_sizes])
        proposals, _ = self.rpn(images, maps)
        results, _ = self.roi_heads(maps, proposals, images.image_sizes)
        return [_detections(r) for r in results]


def _detections(result: dict[str, torch.Tensor]) -> Detections:
    def array(name: str) -> np.ndarray | None:
        value = result.get(name)
        return None if value is None else (value.float() if value.is_floating_point() else value).cpu().numpy()

    masks = result.get("masks")
    return Detections(
        boxes=array("boxes"),
        labels=array("labels"),
        scores=array("scores"),
        masks=None if masks is None else masks[:, 0].float().cpu().numpy(),
        keypoints=array("keypoints"),
        keypoint_scores=array("keypoints_scores"),
    )


def load_heads(config: ModelConfig, version_dir: Path, device: str = "auto") -> MaskRCNNHeads:
    """The torch half of the split path, from the version's weights.pt (on CUDA when there)."""
    params = InstanceParameters.model_validate(config.parameters)
    detector = zoo.build_for(config)
    detector.load_state_dict(torch.load(version_dir / WEIGHTS_ARTIFACT, map_location="cpu", weights_only=True))
    heads = MaskRCNNHeads(detector, params.box_score_thresh, params.max_instances).eval()
    return heads.to(heads_device(device))


def heads_device(device: str = "auto") -> str:
    """Where ``load_heads`` puts the heads for config.torch.device: CUDA when asked or there."""
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
