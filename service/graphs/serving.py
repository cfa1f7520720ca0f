"""Serving wrappers: the exact graph every backend runs.

Input is uint8 RGB NCHW (4x less data than float32 to move and copy); normalisation
happens inside the graph. Every wrapper declares ``input_names``/``output_names`` so
the ONNX export and the torch engine name tensors identically.
"""

from __future__ import annotations

import torch
from torch import nn

from segserve.contract.refine import PROBABILITIES_OUTPUT, PROBABILITY_SCALE
from segserve.graphs import zoo

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """uint8 [0, 255] -> ImageNet-normalised float, in one fused multiply-add."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -torch.tensor(mean).view(1, 3, 1, 1) / std_t, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.scale.dtype) * self.scale + self.shift


class SemanticServingModule(nn.Module):
    """torchvision segmentation net -> per-pixel labels (uint8) or logits (float); with
    ``probabilities``, labels and the uint8-quantised softmax (N, C, H, W) that dense-CRF
    refinement needs (contract.refine.PROBABILITIES_OUTPUT)."""

    input_names = ("images",)

    def __init__(self, net: nn.Module, output: str = "labels", probabilities: bool = False):
        super().__init__()
        if output not in ("labels", "logits"):
            raise ValueError(f"output must be 'labels' or 'logits', not {output!r}")
        if probabilities and output != "labels":
            raise ValueError("probabilities come next to labels; a logits graph already has the scores")
        self.net = net
        self.normalize = Normalize()
        self.output = output
        self.probabilities = probabilities
        self.output_names = (output, PROBABILITIES_OUTPUT) if probabilities else (output,)

    def half_compute(self) -> "SemanticServingModule":
        self.net.half()
        self.normalize.half()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(self.normalize(images))["out"]
        if self.output == "logits":
            return logits.float()
        labels = logits.argmax(dim=1).to(torch.uint8)
        if not self.probabilities:
            return labels
        # 1 byte per class and pixel: a quarter of float32's to copy out of the engine, and
        # finer than the CRF needs (its unary is -log p, clipped at half a step, refine.py).
        probs = torch.softmax(logits.float(), dim=1) * PROBABILITY_SCALE
        return labels, torch.round(probs).to(torch.uint8)


def build_serving_module(config) -> nn.Module:
    """A randomly initialised serving module for a ModelConfig (weights are loaded after)."""
    arch = zoo.get(config.architecture)
    if arch.task != config.task.value:
        raise ValueError(f"architecture {arch.name} is {arch.task}, config says {config.task.value}")
    net = zoo.build_for(config)
    if arch.task == "semantic":
        return SemanticServingModule(net, config.output.kind, probabilities=config.output.probabilities is not None)
    if arch.task in ("instance", "keypoints"):  # the engine half of the split path; heads run in torch (pipelines)
        from segserve.graphs.maskrcnn import (
            MaskRCNNBackbone,  # here: it imports this module
        )

        return MaskRCNNBackbone(net)
    raise NotImplementedError(f"no serving wrapper for task {arch.task}")
