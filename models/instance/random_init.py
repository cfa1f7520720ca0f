"""Random Mask R-CNN weights that still detect distinguishable things.

A freshly initialised detector has BatchNorm running statistics of (0, 1) that do not fit
its random convolutions: MobileNetV3 features shrink to ~1e-8, every RoI looks the same
and every detection gets the same score, which makes parity checks meaningless (any tie
order is "right"). Re-estimating the BatchNorm statistics on a few smooth random images
keeps activations O(1), so random weights give spread-out scores and real boxes.

Random mask heads paint speckle (the transposed conv's checkerboard, logits of std ~10
around 0): any 1-pixel resampling shift rewrites half the mask. Trained masks are solid
shapes; shrinking the mask logits' spatial part and biasing them positive gives solid
masks, so mask checks compare shapes, not noise (the exactness of the masks' content is
tested against torchvision's paste directly).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

MASK_LOGIT_GAIN = 0.05
MASK_LOGIT_BIAS = 3.0


def lively_random_init(detector: MaskRCNN, seed: int = 0) -> MaskRCNN:
    """Make a randomly initialised detector's outputs detector-like (see the module doc)."""
    calibrate_batchnorm(detector, seed)
    if detector.roi_heads.mask_predictor is None:  # Keypoint R-CNN: its heatmaps are left as they are
        return detector
    logits = detector.roi_heads.mask_predictor.mask_fcn_logits
    with torch.no_grad():
        logits.weight.mul_(MASK_LOGIT_GAIN)
        logits.bias.fill_(MASK_LOGIT_BIAS)
    return detector


def calibrate_batchnorm(detector: MaskRCNN, seed: int = 0, size: int = 160) -> MaskRCNN:
    from segserve_models.export import (
        sample_images,  # the exporter's photo-like random images
    )

    norms = [m for m in detector.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
        m.train()
    images = sample_images(2, size, size, seed=seed).float() / 255
    with torch.no_grad():
        detector.backbone(detector.transform.normalize(images))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.eval()
    return detector
