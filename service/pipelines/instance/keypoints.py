"""Keypoints (Keypoint R-CNN): the instance pipeline with the keypoint branch's answer.

Keypoint R-CNN is Mask R-CNN's GeneralizedRCNN with a keypoint branch in its RoI heads, so
it runs the very same split path (``backbone.onnx`` batched on the engine, RPN/RoI heads in
torch) and the same request steps; only the answer differs: per instance ``box``, ``score``,
``label`` and ``keypoints`` as COCO's flat ``[x1, y1, v1, ...]`` (the model's K keypoints,
named with their skeleton in the config and /v1/models) at the image's original size. JSON
only: there is no mask to draw (a client overlays the points and the skeleton itself).
"""

from __future__ import annotations

from segserve.codecs.rcnn_input import ImageMeta
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import Task
from segserve.graphs.maskrcnn import Detections
from segserve.pipelines.base import OutputFormat
from segserve.pipelines.instance.model import MAX_INSTANCES, SCORE_THRESHOLD, InstanceModel, InstanceOptions, label_of
from segserve.pipelines.instance.runner import to_keypoint_instances


class KeypointModel(InstanceModel):
    task = Task.keypoints
    options = (SCORE_THRESHOLD, MAX_INSTANCES)
    formats = (OutputFormat.json,)

    async def start(self) -> None:
        path = InstanceParameters.model_validate(self.config.parameters).default_path
        if path != "split":
            raise ValueError(f"keypoint models serve the split path only (parameters.default_path: {path})")
        await super().start()

    def served(self, detections: Detections, meta: ImageMeta, options: InstanceOptions) -> list[dict]:
        classes = self.config.classes
        found = to_keypoint_instances(detections, meta, options.score_threshold, options.max_instances)
        return [{"class_id": i["class_id"], "label": label_of(i["class_id"], classes), **i} for i in found]
