"""The standard metrics: a confusion matrix for semantic segmentation, pycocotools'
COCOeval for instance masks and for keypoints (OKS)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IGNORE = 255  # VOC's "void" label: not counted


class ConfusionMatrix:
    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # [truth, prediction]

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        if prediction.shape != truth.shape:
            raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in size")
        valid = truth != IGNORE
        t = truth[valid].astype(np.int64)
        p = np.clip(prediction[valid].astype(np.int64), 0, self.num_classes - 1)
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def results(self, class_names: list[str]) -> dict:
        m = self.matrix.astype(np.float64)
        truth_pixels = m.sum(1)
        predicted_pixels = m.sum(0)
        hits = np.diag(m)
        present = truth_pixels > 0  # classes absent from the truth do not count in the means
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = hits / truth_pixels
            iou = hits / (truth_pixels + predicted_pixels - hits)
        return {
            "pixel_accuracy": float(hits.sum() / max(1.0, m.sum())),
            "mean_pixel_accuracy": float(np.mean(recall[present])) if present.any() else 0.0,
            "mean_iou": float(np.mean(iou[present])) if present.any() else 0.0,
            "iou_per_class": {class_names[c]: float(iou[c]) for c in np.flatnonzero(present)},
        }


@dataclass
class InstanceAccumulator:
    """Collects truth and predictions image by image, then runs COCOeval (segm)."""

    images: list[dict] = field(default_factory=list)
    truth: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)

    def add(self, height: int, width: int, truth: list[tuple[int, dict]], predicted: list[tuple[int, float, dict]]) -> None:
        """``truth``: (class_id, rle); ``predicted``: (class_id, score, rle); RLE counts as str."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": height, "width": width})
        for class_id, rle in truth:
            coco_rle = _coco_rle(rle)
            self.truth.append({
                "id": len(self.truth) + 1, "image_id": image_id, "category_id": int(class_id), "iscrowd": 0,
                "segmentation": coco_rle, "area": float(mask_utils.area(coco_rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(coco_rle)],
            })
        for class_id, score, rle in predicted:
            self.predictions.append({"image_id": image_id, "category_id": int(class_id), "score": float(score), "segmentation": _coco_rle(rle)})

    def results(self, class_names: list[str]) -> dict:
        return coco_ap(self.images, self.truth, self.predictions, class_names, "segm", "mask")


@dataclass
class KeypointAccumulator:
    """Collects truth and predictions image by image, then runs COCOeval (keypoints, OKS with
    one sigma per keypoint)."""

    sigmas: list[float] | None  # None: pycocotools' own (COCO's 17 person keypoints)
    images: list[dict] = field(default_factory=list)
    truth: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)

    def add(self, height: int, width: int, truth: list, predicted: list[tuple[int, float, list[float]]]) -> None:
        """``truth``: objects with ``class_id``, ``keypoints`` ((K, 3) or COCO's flat
        [x1, y1, v1, ...]; v 0 = not labelled), ``area`` (OKS's scale) and ``box`` (x1, y1, x2, y2),
        e.g. segserve_models.synthetic.keypoints.KeypointTruth; ``predicted``: (class_id, score,
        flat keypoints) per detection."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": height, "width": width})
        for t in truth:
            x1, y1, x2, y2 = t.box
            keypoints = np.asarray(t.keypoints, dtype=np.float64).ravel()
            self.truth.append({
                "id": len(self.truth) + 1, "image_id": image_id, "category_id": int(t.class_id), "iscrowd": 0,
                "keypoints": keypoints.tolist(), "num_keypoints": int((keypoints[2::3] > 0).sum()),
                "area": float(t.area), "bbox": [x1, y1, x2 - x1, y2 - y1],
            })
        for class_id, score, keypoints in predicted:
            self.predictions.append({"image_id": image_id, "category_id": int(class_id), "score": float(score),
                                     "keypoints": [float(v) for v in keypoints]})

    def results(self, class_names: list[str]) -> dict:
        return coco_ap(self.images, self.truth, self.predictions, class_names, "keypoints", "keypoint", self.sigmas)


def coco_ap(
    images: list[dict], truth: list[dict], predictions: list[dict], class_names: list[str], iou_type: str, name: str,
    sigmas: list[float] | None = None,
) -> dict:
    """COCOeval's AP, AP50 and AP75 (``{name}_ap``, ...) of ``predictions`` against ``truth``;
    ``sigmas``: keypoints' OKS sigmas (None: pycocotools' own, COCO's 17 person keypoints)."""
    categories = [{"id": i, "name": n} for i, n in enumerate(class_names) if i > 0]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": truth, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt.createIndex()
        if not predictions:
            return {f"{name}_ap": 0.0, f"{name}_ap50": 0.0, f"{name}_ap75": 0.0, "images": len(images)}
        evaluation = COCOeval(gt, gt.loadRes(predictions), iou_type)
        if sigmas is not None:
            evaluation.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {f"{name}_ap": float(max(0.0, stats[0])), f"{name}_ap50": float(max(0.0, stats[1])),
            f"{name}_ap75": float(max(0.0, stats[2])), "images": len(images)}


def _coco_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def encode_instance_mask(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


# -- boundary quality ------------------------------------------------------------------------
def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask with a 4-neighbour outside it (the image border is no edge)."""
    edge = np.zeros_like(mask)
    edge[:-1] |= mask[:-1] & ~mask[1:]
    edge[1:] |= mask[1:] & ~mask[:-1]
    edge[:, :-1] |= mask[:, :-1] & ~mask[:, 1:]
    edge[:, 1:] |= mask[:, 1:] & ~mask[:, :-1]
    return edge


def label_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbour has another label: the boundaries between all classes."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[:-1] != labels[1:]
    horizontal = labels[:, :-1] != labels[:, 1:]
    edge[:-1] |= vertical
    edge[1:] |= vertical
    edge[:, :-1] |= horizontal
    edge[:, 1:] |= horizontal
    return edge


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Euclidean) of a True pixel of ``mask``."""
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


class BoundaryScore:
    """Boundary quality of semantic predictions at a pixel tolerance ``radius``:

    * **boundary F-score** (Csurka et al. 2013), per class: precision = the predicted boundary
      pixels within ``radius`` of a true boundary of that class, recall = the true boundary pixels
      within ``radius`` of a predicted one, counted over the whole dataset; F1 of the two, averaged
      over the classes present in the truth;
    * **trimap mIoU** (Kohli et al. 2009, used by DeepLab for its CRF): the mIoU of the pixels within
      ``radius`` of a true boundary between any two classes, where refinement acts.
    """

    def __init__(self, num_classes: int, radius: int):
        self.num_classes = num_classes
        self.radius = radius
        self.counts = np.zeros((num_classes, 4), dtype=np.int64)  # pred matched, pred, truth matched, truth
        self.band = ConfusionMatrix(num_classes)

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        valid = truth != IGNORE
        for c in range(self.num_classes):
            truth_edges = _edges(truth == c) & valid
            pred_edges = _edges(prediction == c) & valid
            if not truth_edges.any() and not pred_edges.any():
                continue
            self.counts[c] += (
                np.count_nonzero(pred_edges & dilate(truth_edges, self.radius)), np.count_nonzero(pred_edges),
                np.count_nonzero(truth_edges & dilate(pred_edges, self.radius)), np.count_nonzero(truth_edges),
            )
        band = dilate(label_edges(truth) & valid, self.radius)
        self.band.update(prediction[band], np.where(valid, truth, IGNORE)[band])

    def results(self, class_names: list[str]) -> dict:
        pm, p, tm, t = (self.counts[:, i].astype(np.float64) for i in range(4))
        present = t > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(p > 0, pm / p, 0.0)
            recall = np.where(t > 0, tm / t, 0.0)
            f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        band = self.band.results(class_names)
        return {
            "radius_px": self.radius,
            "boundary_f": float(np.mean(f[present])) if present.any() else 0.0,
            "boundary_f_per_class": {class_names[c]: float(f[c]) for c in np.flatnonzero(present)},
            "trimap_miou": band["mean_iou"],
        }
