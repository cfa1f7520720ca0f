"""Mask pasting outside any engine, straight into COCO RLE, touching only each box.

torchvision's ``paste_masks_in_image`` builds one full-image float mask per instance
(100 instances at 1280x720 = 370 MB of float32) only for the caller to threshold and
encode it. Here each 28x28 probability map is resized exactly as torchvision does --
padded by one cell, box expanded by the same factor, bilinear to the integer box size --
thresholded inside the box only, and its run lengths are computed from the box crop and
offset into the full image's column-major order. The result is the RLE pycocotools would
produce from torchvision's pasted, thresholded mask.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils


MASK_PADDING = 1  # torchvision's paste_masks_in_image default


def paste_boxes(boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
    """The integer pixel boxes torchvision pastes the padded masks into (expand_boxes + int64)."""
    scale = float(mask_size + 2 * MASK_PADDING) / mask_size
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    center = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    return torch.cat((center - half, center + half), dim=1).to(torch.int64)


def crop_flips(framed: np.ndarray, top: int, left: int, height: int) -> np.ndarray:
    """Positions, in the full image's column-major order, where a binary box crop placed at
    (top, left) flips 0<->1. ``framed`` is the crop with an all-0 row above and below (the
    image outside the box is 0), so every column starts and ends at 0."""
    row, col = np.divmod(np.flatnonzero(framed[1:] != framed[:-1]), framed.shape[1])
    flips = (left + col) * height + (top + row)
    flips.sort()  # few: about two per column
    if top == 0 and top + framed.shape[0] - 2 == height:
        # A column ending on the image's last row and the next one starting on row 0 meet
        # in the flattened order: their two flips at the same position cancel.
        meeting = np.flatnonzero(flips[1:] == flips[:-1])
        flips = np.delete(flips, np.concatenate((meeting, meeting + 1)))
    return flips


def flips_to_counts(flips: np.ndarray, numel: int) -> list[int]:
    """COCO's uncompressed counts: alternating 0-run, 1-run, ... lengths, starting with 0s."""
    bounds = np.concatenate(([0], flips, [numel]))
    counts = bounds[1:] - bounds[:-1]
    if counts.size > 1 and counts[-1] == 0:  # pycocotools stops at the last 1-run
        counts = counts[:-1]
    return counts.tolist()


def masks_to_rles(masks: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], threshold: float = 0.5) -> list[dict]:
    """(N, M, M) mask probabilities + (N, 4) boxes in image coordinates -> N COCO RLEs
    ({"size": [h, w], "counts": bytes}) of ``paste_masks_in_image(...) > threshold``."""
    height, width = image_size
    if len(masks) == 0:
        return []
    probs = F.pad(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)), (MASK_PADDING,) * 4)
    pixel_boxes = paste_boxes(torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)), masks.shape[-1]).tolist()
    uncompressed = []
    for prob, (x0, y0, x1, y1) in zip(probs[:, None, None], pixel_boxes):
        top, bottom = max(y0, 0), min(y1 + 1, height)
        left, right = max(x0, 0), min(x1 + 1, width)
        if bottom > top and right > left:
            # torchvision's resize of the padded mask to the integer box (the same kernel,
            # so bit-identical), then numpy: slicing a tensor costs more than resizing it.
            size = [max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)]
            resized = torch.ops.aten.upsample_bilinear2d(prob, size, False).numpy()[0, 0]
            framed = np.zeros((bottom - top + 2, right - left), dtype=bool)
            np.greater(resized[top - y0 : bottom - y0, left - x0 : right - x0], threshold, out=framed[1:-1])
            flips = crop_flips(framed, top, left, height)
        else:  # box entirely outside the image
            flips = np.empty(0, dtype=np.int64)
        uncompressed.append({"size": [height, width], "counts": flips_to_counts(flips, height * width)})
    return mask_utils.frPyObjects(uncompressed, height, width)
