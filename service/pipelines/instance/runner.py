"""The two serving paths end to end: the steps the serving pipeline runs around its
dynamic batcher, composed once here for the exporter's parity check, the tests and the
benchmark.

    split:       preprocess each -> collate -> backbone engine (batched) -> MaskRCNNHeads -> to_instances
    whole graph: per image: engine on model_full.onnx -> to_instances

Keypoint R-CNN runs the same split (``KeypointSplitRunner``): only the last step differs,
``to_keypoint_instances`` instead of the paste.
"""

from __future__ import annotations

import numpy as np

from segserve.codecs.detections import clip_boxes, kept_boxes, to_instances
from segserve.codecs.rcnn_input import ImageMeta, collate, preprocess, scale_keypoints
from segserve.contract.instance import InstanceParameters
from segserve.engine.base import CPU_CALLS, Engine
from segserve.graphs.maskrcnn import Detections, MaskRCNNHeads


class SplitRunner:
    """The split path in the three steps a dynamic-batching pipeline runs apart:
    ``prepare`` per request (codec pool), ``run_batch`` per batch (engine thread),
    ``finish`` per request (codec pool)."""

    def __init__(self, backbone: Engine, heads: MaskRCNNHeads, params: InstanceParameters, canvas: tuple[int, int]):
        self.backbone, self.heads, self.params, self.canvas = backbone, heads, params, canvas

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        p = self.params
        return preprocess(image, p.min_size, p.max_size, self.canvas, p.canvas_dtype)

    def run_batch(self, prepared: list[tuple[np.ndarray, ImageMeta]]) -> list[Detections]:
        """``prepared``: what ``prepare`` returned for each image of the batch."""
        metas = [meta for _, meta in prepared]
        batch = collate([resized for resized, _ in prepared], metas)
        features = self.backbone.infer(batch)
        with CPU_CALLS.enter(self.heads.device.type == "cpu"):
            return self.heads(features, [m.resized_size for m in metas], batch["images"].shape[-2:])

    def finish(self, detections: Detections, meta: ImageMeta, score_threshold: float | None = None) -> list[dict]:
        p = self.params
        threshold = p.score_threshold if score_threshold is None else score_threshold
        return to_instances(detections, meta, threshold, p.max_instances, p.mask_threshold)

    def __call__(self, images: list[np.ndarray], score_threshold: float | None = None) -> list[list[dict]]:
        prepared = [self.prepare(image) for image in images]
        detections = self.run_batch(prepared)
        return [self.finish(d, meta, score_threshold) for d, (_, meta) in zip(detections, prepared)]


class KeypointSplitRunner(SplitRunner):
    """The split path of a Keypoint R-CNN: the same batch step, keypoints instead of masks."""

    def finish(self, detections: Detections, meta: ImageMeta, score_threshold: float | None = None) -> list[dict]:
        p = self.params
        threshold = p.score_threshold if score_threshold is None else score_threshold
        return to_keypoint_instances(detections, meta, threshold, p.max_instances)


class WholeGraphRunner:
    """The whole-graph path: one engine run per image (the graph holds batch 1)."""

    def __init__(self, engine: Engine, params: InstanceParameters):
        self.engine, self.params = engine, params

    def run_batch(self, images: list[np.ndarray]) -> list[tuple[Detections, ImageMeta]]:
        return [self._detect(image) for image in images]

    def _detect(self, image: np.ndarray) -> tuple[Detections, ImageMeta]:
        out = self.engine.infer({"images": np.ascontiguousarray(image.transpose(2, 0, 1)[None])})
        meta = ImageMeta(original_size=image.shape[:2], resized_size=tuple(int(s) for s in out["resized_size"]))
        return Detections(out["boxes"], out["labels"], out["scores"], out["masks"]), meta

    def __call__(self, images: list[np.ndarray], score_threshold: float | None = None) -> list[list[dict]]:
        p = self.params
        threshold = p.score_threshold if score_threshold is None else score_threshold
        return [to_instances(d, meta, threshold, p.max_instances, p.mask_threshold) for d, meta in self.run_batch(images)]


def to_keypoint_instances(
    detections: Detections, meta: ImageMeta, score_threshold: float = 0.5, max_instances: int = 100
) -> list[dict]:
    """One image's Keypoint R-CNN detections -> [{class_id, score, box, keypoints,
    keypoint_scores}] in original-image pixels, best first. ``keypoints`` is COCO's flat
    [x1, y1, v1, x2, ...] (K triplets; v as torchvision gives it, 1), mapped back exactly as
    torchvision's resize_keypoints does; ``keypoint_scores`` the K heatmap logits."""
    keep, boxes = kept_boxes(detections, meta, score_threshold, max_instances)
    keypoints = scale_keypoints(detections.keypoints[keep], meta)
    return [
        {
            "class_id": int(detections.labels[i]),
            "score": float(detections.scores[i]),
            "box": [float(v) for v in box],
            "keypoints": [float(v) for v in points.ravel()],
            "keypoint_scores": [float(v) for v in detections.keypoint_scores[i]],
        }
        for i, box, points in zip(keep, clip_boxes(boxes, meta), keypoints)
    ]
