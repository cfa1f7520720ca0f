"""Keypoints (Keypoint R-CNN): the instance pipeline with the keypoint branch's answer.

Keypoint R-CNN is Mask R-CNN's GeneralizedRCNN with a keypoint branch in its RoI heads, so
it runs the very same split path (``backbone.onnx`` batched on the engine, RPN/RoI heads in
torch) and the same request steps; only the answer differs: per instance ``box``, ``score``,
``label`` and ``keypoints`` as COCO's flat ``[x1, y1, v1, ...]`` (the model's K keypoints,
named in ``keypoint_names`` and joined by the ``skeleton`` of every answer, as in the config and
/v1/models) at the image's original size. No masks, so no PNG: ``format=overlay`` draws the
boxes, the points and the skeleton.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segserve.codecs.overlay import caption, draw_instances
from segserve.codecs.rcnn_input import ImageMeta
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import Task
from segserve.graphs.maskrcnn import Detections
from segserve.pipelines.base import Encoded, OutputFormat
from segserve.pipelines.instance.model import MAX_INSTANCES, SCORE_THRESHOLD, InstanceModel, InstanceOptions, label_of
from segserve.pipelines.instance.runner import to_keypoint_instances


class KeypointModel(InstanceModel):
    task = Task.keypoints
    options = (SCORE_THRESHOLD, MAX_INSTANCES)
    formats = (OutputFormat.json, OutputFormat.overlay)

    async def start(self) -> None:
        path = InstanceParameters.model_validate(self.config.parameters).default_path
        if path != "split":
            raise ValueError(f"keypoint models serve the split path only (parameters.default_path: {path})")
        await super().start()

    def response_fields(self) -> dict[str, Any]:
        spec = self.config.keypoints
        return {"keypoint_names": spec.names, "skeleton": [list(pair) for pair in spec.skeleton]}

    def draw(self, rgb: np.ndarray, encoded: Encoded, options: InstanceOptions) -> np.ndarray:
        drawn = encoded.body["instances"][::-1]  # best last: on top
        return draw_instances(rgb, [None] * len(drawn), [i["box"] for i in drawn], [i["class_id"] for i in drawn],
                              [caption(i["label"], i["score"]) for i in drawn],
                              keypoints=[i["keypoints"] for i in drawn], skeleton=self.config.keypoints.skeleton)

    def served(self, detections: Detections, meta: ImageMeta, options: InstanceOptions) -> list[dict]:
        classes, owned = self.config.classes, self.config.keypoints.classes
        found = to_keypoint_instances(detections, meta, options.score_threshold, options.max_instances)
        served = []
        for instance in found:
            label = label_of(instance["class_id"], classes)
            if label in owned:  # the others are not keypoints of this object: v = 0, as COCO marks them
                points = instance["keypoints"]
                for k in set(range(1, len(points) // 3 + 1)) - set(owned[label]):
                    points[3 * k - 1] = 0.0
            served.append({"class_id": instance["class_id"], "label": label, **instance})
        return served
