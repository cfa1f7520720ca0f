"""The synthetic scenes as a keypoint dataset: the bundled keypoint model's classes, keypoints
and skeleton, and each scene's truth in that layout.

The polygons are the objects (rectangle, triangle, star); circles and rings stay in the images
as distractors. Every class has its own keypoints in one shared list of K = 12, so each name
means one thing (as COCO's person keypoints do) and the skeleton draws every outline exactly:

    rectangle_1..4   the corners      triangle_1..3   the tips      star_1..5   the outer tips

numbered clockwise from 12 o'clock (``scenes.shape_keypoints``). An instance's truth has the
other classes' keypoints at visibility 0 ("not labelled"), which COCO's OKS ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segserve_models.synthetic.scenes import RECTANGLE, STAR, TRIANGLE, Scene

KEYPOINT_CLASSES = ["background", "rectangle", "triangle", "star"]
# scene class id -> (keypoint-model class id, first keypoint index, keypoint count)
_LAYOUT = {RECTANGLE: (1, 0, 4), TRIANGLE: (2, 4, 3), STAR: (3, 7, 5)}
KEYPOINT_NAMES = [f"{KEYPOINT_CLASSES[cls]}_{i + 1}" for cls, first, count in _LAYOUT.values() for i in range(count)]
# COCO's convention: 1-based keypoint indices, one pair per line to draw
KEYPOINT_SKELETON = [
    [first + i + 1, first + (i + 1) % count + 1] for _, first, count in _LAYOUT.values() for i in range(count)
]
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
# Each class's own keypoints (1-based), as the served config lists them (KeypointSpec.classes)
KEYPOINTS_BY_CLASS = {KEYPOINT_CLASSES[cls]: list(range(first + 1, first + count + 1)) for cls, first, count in _LAYOUT.values()}
# COCO OKS sigma per keypoint: a polygon corner is a point as sharp as COCO's eyes (0.025) but
# the bundled model is small; 0.05 sits between the face points and the body joints (0.062-0.107).
KEYPOINT_SIGMA = 0.05


@dataclass(frozen=True)
class KeypointTruth:
    class_id: int  # in KEYPOINT_CLASSES
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 of the visible pixels
    keypoints: np.ndarray  # (NUM_KEYPOINTS, 3) float32 x, y, visibility (0 or 2, COCO's "visible")
    area: float  # visible pixels (COCO's OKS scale)


def keypoint_truth(scene: Scene) -> list[KeypointTruth]:
    """The scene's polygons in the keypoint layout (module docstring)."""
    truth = []
    for inst in scene.instances:
        if inst.class_id not in _LAYOUT:
            continue
        class_id, first, count = _LAYOUT[inst.class_id]
        keypoints = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        x1, y1, x2, y2 = inst.box
        for i, (x, y, seen) in enumerate(inst.keypoints):
            # a tip's vertex may sit a fraction of a pixel outside the pixels drawn for it: kept in
            # the box, where torchvision's keypoint targets (and heatmaps) live
            keypoints[first + i] = (min(max(x, x1), x2), min(max(y, y1), y2), 2) if seen else (0, 0, 0)
        truth.append(KeypointTruth(class_id, inst.box, keypoints, float(inst.mask.sum())))
    return truth
