"""Random weights that still segment: BatchNorm statistics measured on synthetic scenes.

    python -m segserve_models.calibration --model deeplabv3_mobilenet_v3_large --out /tmp/deeplabv3-random.pth \
        [--backbone bundled:shapes_lraspp]
    segserve export --model deeplabv3_mobilenet_v3_large --weights /tmp/deeplabv3-random.pth --video-split

A fresh torchvision network's BatchNorm layers hold the identity statistics (mean 0, var 1).
DeepLabV3-MobileNetV3 then shrinks its activations layer by layer: its logits stay within a few
hundredths of the classifier's random biases and it labels every pixel with one class, so a
comparison of two ways of running it (backends, keyframe reuse) agrees trivially. Measuring
the statistics on a batch of images, the random convolution weights left as they are, gives a
random-weight model whose label maps follow the image content. Its labels mean nothing; only
how far another way of running it departs from them does (docs/benchmarks.md, video).

``--backbone`` takes the backbone from other weights of the same backbone, e.g. the bundled
LRASPP's (trained here on synthetic shapes; torchvision's LRASPP and DeepLabV3-MobileNetV3
share the dilated MobileNetV3-Large): trained features under a random head.

The checkpoint is ``{"model": state_dict, "classes": [...]}`` (the architecture's pretrained
class names: the head keeps its real size), what ``segserve export --weights PATH`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segserve.graphs import zoo
from segserve.graphs.serving import Normalize
from segserve_models.export import ExportError, resolve_weights
from segserve_models.synthetic import make_scene
from segserve_models.weights import WeightsSpec

CALIBRATION_SEED_BASE = 4_000_000_000  # scenes apart from training (models/train.py) and the video benchmark's clips


def calibrate_batchnorm(net: nn.Module, images: torch.Tensor, keep: nn.Module | None = None) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``images`` (uint8 NCHW) passing
    through ``net``, except in ``keep`` (a part of it); returns it in eval mode, its other
    weights untouched."""
    kept = set(keep.modules()) if keep is not None else set()
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in kept]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a plain average over the calibration batch
    net.train()
    if keep is not None:
        keep.eval()
    with torch.no_grad():
        net(Normalize()(images))
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    return net.eval()


def synthetic_batch(count: int, height: int, width: int, first_seed: int = CALIBRATION_SEED_BASE) -> torch.Tensor:
    """``count`` synthetic scenes (models/synthetic) as a uint8 NCHW batch."""
    scenes = [make_scene(seed, height, width).image for seed in range(first_seed, first_seed + count)]
    return torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2).contiguous()


def calibrated_random(architecture: str, images: torch.Tensor, seed: int = 0, backbone: str | None = None) -> nn.Module:
    """``architecture`` with random weights (torchvision's initialisation, seeded) and
    BatchNorm statistics from ``images``; with ``backbone`` (weights as ``--weights`` takes
    them), its ``backbone.*`` weights (statistics included) from there."""
    arch = zoo.get(architecture)
    torch.manual_seed(seed)
    net = arch.build(len(arch.pretrained_classes))
    if backbone is not None:
        state, _, _ = resolve_weights(arch, WeightsSpec.parse(backbone), progress=False)
        own = {k for k in net.state_dict() if k.startswith("backbone.")}
        given = {k: v for k, v in (state or {}).items() if k.startswith("backbone.")}
        if set(given) != own:
            raise ExportError(f"{backbone} has no backbone that fits {architecture}")
        net.load_state_dict(given, strict=False)
    return calibrate_batchnorm(net, images, keep=net.backbone if backbone is not None else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a semantic architecture, e.g. deeplabv3_mobilenet_v3_large")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--images", type=int, default=16, help="synthetic scenes to measure the statistics on")
    parser.add_argument("--size", default="256x256", help="their size HxW (the size you export at)")
    parser.add_argument("--backbone", help="take the backbone's weights from these (e.g. bundled:shapes_lraspp)")
    args = parser.parse_args(argv)
    height, _, width = args.size.partition("x")
    torch.set_num_threads(2)
    net = calibrated_random(args.model, synthetic_batch(args.images, int(height), int(width or height)), args.seed, args.backbone)
    torch.save({"model": net.state_dict(), "classes": zoo.get(args.model).pretrained_classes}, args.out)
    weights = f"random weights (seed {args.seed})" + (f", backbone from {args.backbone}" if args.backbone else "")
    print(f"{args.model}: {weights}, BatchNorm calibrated on {args.images} synthetic scenes -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
