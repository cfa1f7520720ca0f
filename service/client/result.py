"""One segmented image as the client returns it: the server's JSON, with its COCO RLE masks
decoded only when asked for (``label_map``, ``Segment.mask``, ``Instance.mask``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from segserve.client.images import ImageInput, Payload, pixels
from segserve.codecs.overlay import blend_labels, caption, draw_instances


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE {"size", "counts"} -> (h, w) bool."""
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).view(bool)


@dataclass(frozen=True)
class Timing:
    """Milliseconds: the server's (queue, compute, total) and the client's round trip, retries included."""

    queue_ms: float
    compute_ms: float
    total_ms: float
    round_trip_ms: float


@dataclass(frozen=True, eq=False)
class Segment:
    """Semantic: the pixels of one class present in the image."""

    class_id: int
    label: str
    area: int
    rle: dict = field(repr=False)

    @cached_property
    def mask(self) -> np.ndarray:
        return decode_rle(self.rle)


@dataclass(frozen=True, eq=False)
class Instance:
    """Instance and keypoints: one detected object, best first in ``Result.instances``."""

    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    rle: dict | None = field(repr=False)  # None: a keypoint model's instance has no mask
    keypoints: np.ndarray | None = field(default=None, repr=False)  # (k, 3) x, y, visibility when the model gives them

    @cached_property
    def mask(self) -> np.ndarray:
        if self.rle is None:
            raise ValueError(f"a keypoint model's {self.label} has no mask: use its box and keypoints")
        return decode_rle(self.rle)


class Result:
    """``/segment``'s answer. ``label_map`` is the (height, width) class-id map (instance models:
    each pixel's best instance's class, 0 elsewhere); instance models also give ``instances``,
    ``masks`` (n, h, w), ``boxes``, ``scores``, ``class_ids`` and ``keypoints`` when present.
    Keypoint models give instances without masks (``label_map``, ``masks`` and ``areas`` raise)
    and ``keypoint_names`` and ``skeleton`` (1-based pairs) to read and draw the keypoints with."""

    def __init__(self, body: dict[str, Any], round_trip_ms: float, image: ImageInput | Payload | None = None):
        self.raw = body
        self.model: str = body["model"]
        self.task: str = body["task"]
        self.width: int = body["width"]
        self.height: int = body["height"]
        self.classes: list[str] = list(body.get("classes") or [])
        self.segments = [Segment(s["class_id"], s["label"], s["area"], s["mask"]) for s in body.get("segments") or []]
        self.instances = [
            Instance(i["class_id"], i["label"], i["score"], tuple(i["box"]), i.get("mask"),
                     None if i.get("keypoints") is None else np.asarray(i["keypoints"], np.float32).reshape(-1, 3))
            for i in body.get("instances") or []
        ]
        self.keypoint_names: list[str] = list(body.get("keypoint_names") or [])
        self.skeleton: list[tuple[int, int]] = [tuple(pair) for pair in body.get("skeleton") or []]
        timing = body.get("timing_ms") or {}
        self.timing = Timing(timing.get("queue", 0.0), timing.get("compute", 0.0), timing.get("total", 0.0), round_trip_ms)
        self._image = image

    def __repr__(self) -> str:
        found = f"{len(self.instances)} instances" if self.task != "semantic" else f"{len(self.segments)} classes"
        return f"<Result {self.model} ({self.task}) {self.width}x{self.height}: {found}, {self.timing.total_ms:.1f} ms>"

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    # -- semantic and instance -----------------------------------------------------------
    @cached_property
    def label_map(self) -> np.ndarray:
        dtype = np.uint8 if max(len(self.classes), *(i.class_id + 1 for i in self.instances), 1) <= 256 else np.int32
        labels = np.zeros(self.shape, dtype)
        for segment in self.segments:
            labels[segment.mask] = segment.class_id
        for instance in reversed(self.instances):  # best last: on top, as the server's instance PNG has it
            labels[instance.mask] = instance.class_id
        return labels

    @cached_property
    def areas(self) -> dict[str, int]:
        """Pixels per label: semantic from the server's areas; instance from the masks."""
        if self.task == "semantic":
            return {s.label: s.area for s in self.segments}
        counts: dict[str, int] = {}
        for instance in self.instances:
            counts[instance.label] = counts.get(instance.label, 0) + int(instance.mask.sum())
        return counts

    # -- instance ------------------------------------------------------------------------
    @cached_property
    def instance_map(self) -> np.ndarray:
        """(h, w): 0 = background, i = the i-th instance (1-based, best first), best on top."""
        ids = np.zeros(self.shape, np.uint8 if len(self.instances) <= 255 else np.uint16)
        for i in range(len(self.instances), 0, -1):
            ids[self.instances[i - 1].mask] = i
        return ids

    @property
    def masks(self) -> np.ndarray:
        return np.stack([i.mask for i in self.instances]) if self.instances else np.zeros((0, *self.shape), bool)

    @property
    def boxes(self) -> np.ndarray:
        return np.asarray([i.box for i in self.instances], np.float32).reshape(-1, 4)

    @property
    def scores(self) -> np.ndarray:
        return np.asarray([i.score for i in self.instances], np.float32)

    @property
    def class_ids(self) -> np.ndarray:
        return np.asarray([i.class_id for i in self.instances], np.int64)

    @property
    def keypoints(self) -> np.ndarray | None:
        """(n, k, 3) when the model gives keypoints, else None."""
        if not self.instances or any(i.keypoints is None for i in self.instances):
            return None
        return np.stack([i.keypoints for i in self.instances])

    # -- pictures ------------------------------------------------------------------------
    def overlay(self, image: ImageInput | None = None) -> np.ndarray:
        """(h, w, 3) uint8: the image with its masks drawn in, as the server's ``format=overlay``
        draws them (segserve.codecs.overlay). ``image`` defaults to the one that was segmented."""
        source = image if image is not None else self._image
        if source is None:
            raise ValueError("overlay() needs the image: this result does not hold the one it came from")
        rgb = pixels(source)
        if rgb.shape[:2] != self.shape:
            raise ValueError(f"the image is {rgb.shape[1]}x{rgb.shape[0]}, the result {self.width}x{self.height}")
        if self.task == "semantic":
            return blend_labels(rgb, self.label_map)
        drawn = self.instances[::-1]  # best last: on top
        keypoints = None if self.task != "keypoints" else [i.keypoints for i in drawn]
        return draw_instances(rgb, [None if i.rle is None else i.mask for i in drawn], [i.box for i in drawn],
                              [i.class_id for i in drawn], [caption(i.label, i.score) for i in drawn],
                              keypoints=keypoints, skeleton=self.skeleton)
