"""Deterministic synthetic shape scenes and videos with exact segmentation truth."""

from segserve_models.synthetic.scenes import CLASSES, Instance, Scene, make_scene
from segserve_models.synthetic.video import Video, make_video

__all__ = ["CLASSES", "Instance", "Scene", "Video", "make_scene", "make_video"]
