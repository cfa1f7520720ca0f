"""Evaluation data: the held-out synthetic set, or a real dataset on disk in VOC / COCO layout."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from segserve_models.evaluation.metrics import encode_instance_mask

# Seeds at or above this are never used for training (models/train.py).
HELD_OUT_SEED_BASE = 1_000_000_000


@dataclass
class Sample:
    name: str
    data: bytes  # encoded image, as a client would send it
    content_type: str
    height: int
    width: int
    labels: np.ndarray | None = None  # semantic truth (H, W); 255 = ignore
    instances: list[tuple[int, dict]] | None = None  # instance truth: (class_id, RLE with str counts)
    # keypoint truth: class_id, keypoints, area, box (segserve_models.synthetic.keypoints.KeypointTruth)
    keypoints: list | None = None


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")  # lossless: every backend sees the same pixels
    return buf.getvalue()


def synthetic(count: int, first_seed: int = HELD_OUT_SEED_BASE) -> Iterator[Sample]:
    """Held-out scenes with every truth: labels, instances, and the polygons' keypoints in the
    bundled keypoint model's layout (segserve_models.synthetic.keypoints)."""
    from segserve_models.synthetic import make_scene
    from segserve_models.synthetic.keypoints import keypoint_truth

    for seed in range(first_seed, first_seed + count):
        scene = make_scene(seed)
        h, w = scene.labels.shape
        yield Sample(
            f"synthetic-{seed}", _png(scene.image), "image/png", h, w, labels=scene.labels,
            instances=[(inst.class_id, encode_instance_mask(inst.mask)) for inst in scene.instances],
            keypoints=keypoint_truth(scene),
        )


def voc(root: Path, split: str = "val", limit: int | None = None) -> Iterator[Sample]:
    """PASCAL VOC layout: ImageSets/Segmentation/<split>.txt, JPEGImages/, SegmentationClass/ (palette PNGs)."""
    names = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    for name in names[:limit]:
        data = (root / "JPEGImages" / f"{name}.jpg").read_bytes()
        labels = np.asarray(Image.open(root / "SegmentationClass" / f"{name}.png"))  # palette indices = ids
        yield Sample(name, data, "image/jpeg", labels.shape[0], labels.shape[1], labels=labels)


def coco(images: Path, annotations: Path, limit: int | None = None) -> Iterator[Sample]:
    """COCO layout: an images folder and an instances_*.json (or person_keypoints_*.json, whose
    keypoints are read too). Category ids are passed through, so the served model's class ids
    must be COCO's (torchvision's 91-entry list is; its Keypoint R-CNN's person is 1, as COCO's)."""
    from pycocotools.coco import COCO

    from segserve_models.synthetic.keypoints import KeypointTruth

    dataset = COCO(str(annotations))
    for image_id in sorted(dataset.getImgIds())[:limit]:
        info = dataset.loadImgs(image_id)[0]
        h, w = info["height"], info["width"]
        truth, keypoints = [], []
        for ann in dataset.loadAnns(dataset.getAnnIds(imgIds=image_id, iscrowd=False)):
            rle = dataset.annToRLE(ann)  # polygons and uncompressed RLEs both come back compressed
            truth.append((ann["category_id"], {"size": [h, w], "counts": rle["counts"].decode("ascii")}))
            if ann.get("keypoints"):
                x, y, bw, bh = ann["bbox"]
                points = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
                keypoints.append(KeypointTruth(ann["category_id"], (x, y, x + bw, y + bh), points, float(ann["area"])))
        data = (images / info["file_name"]).read_bytes()
        yield Sample(str(image_id), data, "image/jpeg", h, w, instances=truth, keypoints=keypoints)


def load(spec: str, limit: int | None = None) -> Iterator[Sample]:
    """'synthetic[:COUNT[:FIRST_SEED]]', 'voc:ROOT[:SPLIT]' or 'coco:IMAGES_DIR:ANNOTATIONS_JSON'."""
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        count, _, first = rest.partition(":")
        return synthetic(int(count or limit or 32), int(first or HELD_OUT_SEED_BASE))
    if kind == "voc":
        root, _, split = rest.partition(":")
        return voc(Path(root), split or "val", limit)
    if kind == "coco":
        images, _, annotations = rest.partition(":")
        return coco(Path(images), Path(annotations), limit)
    raise ValueError(f"unknown dataset {spec!r}: use synthetic[:N], voc:ROOT[:SPLIT] or coco:IMAGES:ANNOTATIONS.json")
