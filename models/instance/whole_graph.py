"""The whole torchvision Mask R-CNN as one graph, for engines that can run it (batch 1).

torch's legacy ONNX exporter traces Mask R-CNN one image per graph (pytorch/vision#2311,
#2309) and the dynamo exporter fails in batched_nms, so this path cannot batch; it exists
as a second serving path and a cross-check of the split one. Everything torchvision does
runs inside -- /255, normalisation, its own resize, RPN, RoI heads -- except pasting masks
into the image, which (like the split path) is left to ``segserve.codecs.box_masks``: the
pasted output would be N full-size float masks, and its Loop is what TensorRT rejects.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.onnx.operators import shape_as_tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList


class MaskRCNNWholeGraph(nn.Module):
    """uint8 (1, 3, H, W) image as received -> that image's detections in network-input
    coordinates, and the network-input size (h, w) they refer to (no batch axis)."""

    input_names = ("images",)
    output_names = ("boxes", "labels", "scores", "masks", "resized_size")

    def __init__(self, detector: MaskRCNN):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        transform = self.detector.transform
        image = images[0].float() / 255  # what torchvision eager is given
        resized, _ = transform.resize(transform.normalize(image), None)
        batch = ImageList(transform.batch_images([resized], transform.size_divisible), [resized.shape[-2:]])
        features = self.detector.backbone(batch.tensors)
        proposals, _ = self.detector.rpn(batch, features)
        detections, _ = self.detector.roi_heads(features, proposals, batch.image_sizes)
        found = detections[0]
        # a tensor, not Python ints, so the traced graph keeps it dynamic
        resized_size = shape_as_tensor(resized)[-2:]
        return found["boxes"], found["labels"], found["scores"], found["masks"][:, 0], resized_size
