"""One image's detections (boxes, labels, scores, 28x28 mask probabilities in network-input
coordinates) -> the served instances in original-image pixels: boxes scaled back and clipped,
masks pasted straight into COCO RLE (box_masks). Pure array work, shared by the serving
pipeline (segserve.pipelines.instance) and anything that must answer exactly as it does
(the benchmark's peers import it without the rest of segserve)."""

from __future__ import annotations

import numpy as np

from segserve.codecs.box_masks import masks_to_rles
from segserve.codecs.rcnn_input import ImageMeta, scale_boxes


def kept_boxes(detections, meta: ImageMeta, score_threshold: float, max_instances: int):
    """The detections at or above ``score_threshold`` (at most ``max_instances``, best first) and
    their boxes in original-image pixels, unclipped."""
    keep = np.flatnonzero(detections.scores >= score_threshold)[:max_instances]
    return keep, scale_boxes(detections.boxes[keep], meta)


def clip_boxes(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Served boxes stay in the image (float32 rescaling can overshoot the border by ~1e-5)."""
    height, width = meta.original_size
    return np.clip(boxes, 0, [width, height, width, height])


def to_instances(
    detections,  # segserve.graphs.maskrcnn.Detections (numpy boxes, labels, scores, masks): not imported, codecs sit below graphs
    meta: ImageMeta,
    score_threshold: float = 0.5,
    max_instances: int = 100,
    mask_threshold: float = 0.5,
) -> list[dict]:
    """One image's detections -> [{class_id, score, box, rle}] in original-image pixels,
    best first. ``box`` is [x0, y0, x1, y1] floats; ``rle`` a COCO RLE with str counts."""
    keep, boxes = kept_boxes(detections, meta, score_threshold, max_instances)
    # pasted from the unclipped boxes as torchvision does; served boxes are clipped
    rles = masks_to_rles(detections.masks[keep], boxes, meta.original_size, mask_threshold)
    boxes = clip_boxes(boxes, meta)
    return [
        {
            "class_id": int(detections.labels[i]),
            "score": float(detections.scores[i]),
            "box": [float(v) for v in box],
            "rle": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        }
        for i, box, rle in zip(keep, boxes, rles)
    ]
