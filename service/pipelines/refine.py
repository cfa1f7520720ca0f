"""Dense-CRF refinement of a semantic model's output (``?refine=crf``), DeepLab's post-processing
step: pydensecrf's fully connected CRF (Krähenbühl & Koltun 2011) with the model's class scores
as unary and the image as the appearance kernel.

It runs at **model resolution, on the letterboxed content** (the padding is left out): the cost of
mean-field inference grows with the pixel count (~2-3 ms per 10^4 pixels and 5 iterations on one
core here, docs/accuracy.md), so a 256x256 model input costs tens of milliseconds where a 1920x1080
original would cost ~30x that; the engine's scores are at model resolution anyway (upsampling them
first adds no information), and the refined labels then take the unchanged restore + RLE/PNG path.

Called from ``SemanticModel.encode``, i.e. on the codec pool, never on the event loop. pydensecrf
holds the GIL while it computes (its Cython wrapper has no ``nogil``), so inference runs one
mean-field step per call: the interpreter may switch threads between steps, which keeps the event
loop's waits to one step's length (a few ms) instead of the whole refinement.
"""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf

from segserve.contract.model_config import UINT8_CLASSES
from segserve.contract.refine import PROBABILITY_SCALE, CrfSettings

# -log of half a quantisation step: a class the uint8 softmax rounds to 0 is unlikely, not impossible.
_MIN_PROBABILITY = 0.5 / PROBABILITY_SCALE


def unary(scores: np.ndarray) -> np.ndarray:
    """(C, H, W) scores -> (C, H*W) float32 -log p, C-contiguous as pydensecrf takes it.
    uint8 scores are the quantised softmax (round(p * 255)); float scores are logits."""
    c = scores.shape[0]
    if scores.dtype == np.uint8:
        p = np.maximum(scores.reshape(c, -1).astype(np.float32) * (1.0 / PROBABILITY_SCALE), _MIN_PROBABILITY)
        return np.ascontiguousarray(-np.log(p))
    logits = scores.reshape(c, -1).astype(np.float32)
    shifted = logits - logits.max(axis=0, keepdims=True)
    return np.ascontiguousarray(np.log(np.exp(shifted).sum(axis=0, keepdims=True)) - shifted)


def crf_labels(scores: np.ndarray, image: np.ndarray, settings: CrfSettings) -> np.ndarray:
    """(C, h, w) class scores and the (3, h, w) uint8 RGB image they came from -> (h, w) uint8
    refined class ids."""
    c, h, w = scores.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(unary(scores))
    crf.addPairwiseGaussian(sxy=settings.gaussian_sxy, compat=settings.gaussian_compat)
    rgb = np.ascontiguousarray(image.transpose(1, 2, 0))
    crf.addPairwiseBilateral(sxy=settings.bilateral_sxy, srgb=settings.bilateral_srgb, rgbim=rgb, compat=settings.bilateral_compat)
    q, tmp1, tmp2 = crf.startInference()
    for _ in range(settings.iterations):
        crf.stepInference(q, tmp1, tmp2)  # one step per call: see the module's docstring
    return np.asarray(q).reshape(c, h, w).argmax(axis=0).astype(np.uint8 if c <= UINT8_CLASSES else np.int32)


def refine_letterboxed(
    labels: np.ndarray, scores: np.ndarray, image: np.ndarray, content_h: int, content_w: int, settings: CrfSettings
) -> np.ndarray:
    """The model-resolution label map with its content region (the image inside the letterbox)
    refined; the padding, which nothing restores, keeps the engine's labels."""
    refined = crf_labels(scores[:, :content_h, :content_w], image[:, :content_h, :content_w], settings)
    out = labels.astype(refined.dtype, copy=True)
    out[:content_h, :content_w] = refined
    return out
