"""Serving paths vs torchvision eager: the issue's "same instances" criterion.

Keypoint R-CNN is held to the same matching, with keypoints in place of masks: every
matched pair's K keypoints within ``keypoint_px`` (1 px, as boxes). A keypoint is the argmax
of its heatmap, so where two cells of a flat heatmap tie within float noise the argmax may
jump between them: such a keypoint (its heatmap maximum, ``keypoint_scores``, equal within
the score tolerance) is a tie, not a miss, the keypoint twin of an instance at the score cut;
at most ``keypoint_ties`` (1 %) of the compared keypoints may be one.

Same weights, same images: every eager instance has a served twin with the same label,
box corners within 1 px, score within 1e-3 and mask IoU >= 0.98 -- and vice versa.
Masks that miss the IoU still pass if they agree within one pixel (each inside the other
grown by one pixel): torchvision pastes each mask into its box truncated to integers, so a
box that moves 0.004 px across an integer (float noise between engines) moves the mask's
edge by a whole pixel, and a small mask's IoU with it. That is the mask twin of "boxes
within 1 px", not a different mask. An
instance may lack a twin only when its score is within the score tolerance of the cut it
sits at (the score threshold -- the detector's box_score_thresh or the served one,
whichever is higher -- or the lowest kept score when max_instances was reached): there a
1e-5 wobble legitimately decides whether it makes the list.

Two references: torchvision eager as is, and torchvision eager whose resized image is
rounded to uint8 (``uint8_resize``) like a uint8 split-path canvas. A float32 canvas must
match the first; a uint8 one cannot (the rounding moves scores by ~1e-3, see
``segserve.codecs.rcnn_input``), so it is held to the second, which still pins down
everything else -- padding, the split, heads, mapping back, paste, RLE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection import KeypointRCNN, MaskRCNN
from torchvision.models.detection.image_list import ImageList

from segserve.codecs.rcnn_input import resize, resize_scale


@dataclass
class Tolerances:
    box_px: float = 1.0
    score: float = 1e-3
    mask_iou: float = 0.98
    keypoint_px: float = 1.0
    keypoint_ties: float = 0.01  # the fraction of compared keypoints allowed to be argmax ties


@dataclass
class ParityResult:
    reference: int  # eager instances
    matched: int
    unmatched_at_cut: int  # unmatched, but within tolerance of the score cut (allowed)
    unmatched: int  # unmatched anywhere else, or masks that disagree (a failure)
    max_box_diff: float
    max_score_diff: float
    min_mask_iou: float  # over matched pairs, including those passing by the 1-pixel rule
    max_keypoint_diff: float = 0.0  # keypoint models: over matched pairs, x and y, ties left out
    keypoints: int = 0  # keypoint models: keypoints compared (of matched pairs)
    keypoint_ties: int = 0  # of those, argmax ties (see the module docstring)
    max_keypoint_ties: float = Tolerances.keypoint_ties

    @property
    def ok(self) -> bool:
        return self.unmatched == 0 and self.keypoint_ties <= self.max_keypoint_ties * self.keypoints

    def merge(self, other: "ParityResult") -> "ParityResult":
        return ParityResult(
            self.reference + other.reference,
            self.matched + other.matched,
            self.unmatched_at_cut + other.unmatched_at_cut,
            self.unmatched + other.unmatched,
            max(self.max_box_diff, other.max_box_diff),
            max(self.max_score_diff, other.max_score_diff),
            min(self.min_mask_iou, other.min_mask_iou),
            max(self.max_keypoint_diff, other.max_keypoint_diff),
            self.keypoints + other.keypoints,
            self.keypoint_ties + other.keypoint_ties,
            self.max_keypoint_ties,
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _detect_uint8_resize(detector: MaskRCNN, images: list[np.ndarray]) -> list[dict]:
    """``detector(images)`` step by step, with the resize swapped for the split path's."""
    t = detector.transform
    size = t.min_size[-1], t.max_size
    resized = [resize(img, resize_scale(*img.shape[:2], *size), "uint8").float() / 255 for img in images]
    normalised = [t.normalize(r) for r in resized]
    batch = ImageList(t.batch_images(normalised, t.size_divisible), [tuple(r.shape[-2:]) for r in resized])
    features = detector.backbone(batch.tensors)
    proposals, _ = detector.rpn(batch, features)
    detections, _ = detector.roi_heads(features, proposals, batch.image_sizes)
    return t.postprocess(detections, batch.image_sizes, [img.shape[:2] for img in images])


def eager_instances(
    detector: MaskRCNN,
    images: list[np.ndarray],
    score_threshold: float,
    mask_threshold: float = 0.5,
    uint8_resize: bool = False,
) -> list[list[dict]]:
    """torchvision's own answer, as instances: float images /255 in, pasted masks thresholded
    and RLE-encoded by pycocotools. Images go in one call, so they are batched (padded) the
    way torchvision batches them."""
    detector.eval()
    with torch.no_grad():
        if uint8_resize:
            outputs = _detect_uint8_resize(detector, images)
        else:
            outputs = detector([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1).float() / 255 for i in images])
    result = []
    for out in outputs:
        keep = out["scores"] >= score_threshold
        masks = (out["masks"][keep, 0] > mask_threshold).numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
        result.append(
            [
                {"class_id": int(label), "score": float(score), "box": [float(v) for v in box], "rle": rle}
                for label, score, box, rle in zip(out["labels"][keep], out["scores"][keep], out["boxes"][keep], rles)
            ]
        )
    return result


def eager_keypoint_instances(detector: KeypointRCNN, images: list[np.ndarray], score_threshold: float) -> list[list[dict]]:
    """torchvision's own Keypoint R-CNN answer, as the served instances: float images /255 in,
    one call (batched as torchvision batches), keypoints flat [x1, y1, v1, ...]."""
    detector.eval()
    with torch.no_grad():
        outputs = detector([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1).float() / 255 for i in images])
    return [
        [
            {"class_id": int(label), "score": float(score), "box": [float(v) for v in box],
             "keypoints": [float(v) for v in points.flatten()], "keypoint_scores": [float(v) for v in kp_scores]}
            for label, score, box, points, kp_scores in zip(
                out["labels"], out["scores"], out["boxes"], out["keypoints"], out["keypoints_scores"]
            )
            if score >= score_threshold
        ]
        for out in outputs
    ]


def keypoint_diffs(a: dict, b: dict, tol: Tolerances) -> tuple[np.ndarray, np.ndarray]:
    """Two instances' keypoints: each one's largest x or y difference (pixels), and whether it
    is an argmax tie (further apart than ``tol.keypoint_px``, heatmap maxima equal within the
    score tolerance, relative to their size)."""
    xy = lambda i: np.asarray(i["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]  # noqa: E731
    diffs = np.abs(xy(a) - xy(b)).max(axis=1)
    sa, sb = (np.asarray(i["keypoint_scores"], dtype=np.float64) for i in (a, b))
    ties = (diffs > tol.keypoint_px) & (np.abs(sa - sb) <= tol.score * np.maximum(1.0, np.abs(sa)))
    return diffs, ties
    return float(np.abs(xy(a) - xy(b)).max(initial=0.0))


def mask_iou(a: dict, b: dict) -> float:
    """IoU of two RLEs; two empty masks agree (pycocotools says 0)."""
    if mask_utils.area(a) == 0 and mask_utils.area(b) == 0:
        return 1.0
    return float(mask_utils.iou([a], [b], [0])[0][0])


def _grow_one_pixel(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return grown


def within_one_pixel(a: dict, b: dict) -> bool:
    ma, mb = mask_utils.decode(a).astype(bool), mask_utils.decode(b).astype(bool)
    return bool(not (ma & ~_grow_one_pixel(mb)).any() and not (mb & ~_grow_one_pixel(ma)).any())


def _cut(instances: list[dict], score_threshold: float, max_instances: int) -> float:
    return instances[-1]["score"] if len(instances) >= max_instances else score_threshold


def compare(
    reference: list[dict],
    served: list[dict],
    score_threshold: float,
    max_instances: int,
    tol: Tolerances = Tolerances(),
) -> ParityResult:
    """Greedy one-to-one matching, best eager score first; see the module docstring."""
    ref_boxes = np.array([r["box"] for r in reference], dtype=np.float64).reshape(-1, 4)
    got_boxes = np.array([g["box"] for g in served], dtype=np.float64).reshape(-1, 4)
    ref_scores = np.array([r["score"] for r in reference])
    got_scores = np.array([g["score"] for g in served])
    got_labels = np.array([g["class_id"] for g in served])
    taken = np.zeros(len(served), dtype=bool)
    pairs = []
    for i, r in enumerate(reference):
        box_diff = np.abs(got_boxes - ref_boxes[i]).max(axis=1) if len(served) else np.empty(0)
        ok = (
            ~taken
            & (got_labels == r["class_id"])
            & (box_diff <= tol.box_px)
            & (np.abs(got_scores - ref_scores[i]) <= tol.score)
        )
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(box_diff[ok])])
            taken[j] = True
            pairs.append((i, j, float(box_diff[j])))

    matched_ref = {i for i, _, _ in pairs}
    cut_ref = _cut(reference, score_threshold, max_instances)
    cut_got = _cut(served, score_threshold, max_instances)
    at_cut = sum(abs(r["score"] - cut_ref) <= tol.score for i, r in enumerate(reference) if i not in matched_ref)
    at_cut += sum(abs(g["score"] - cut_got) <= tol.score for j, g in enumerate(served) if not taken[j])
    lonely = (len(reference) - len(pairs)) + (len(served) - len(pairs)) - at_cut

    masks = bool(pairs) and "rle" in reference[pairs[0][0]]
    ious = [mask_iou(served[j]["rle"], reference[i]["rle"]) for i, j, _ in pairs] if masks else []
    bad_pairs = sum(
        iou < tol.mask_iou and not within_one_pixel(served[j]["rle"], reference[i]["rle"])
        for iou, (i, j, _) in zip(ious, pairs)
    )
    keypoints = bool(pairs) and "keypoints" in reference[pairs[0][0]]
    compared = [keypoint_diffs(served[j], reference[i], tol) for i, j, _ in pairs] if keypoints else []
    bad_pairs += sum(bool(((diffs > tol.keypoint_px) & ~ties).any()) for diffs, ties in compared)
    untied = [diffs[~ties] for diffs, ties in compared]
    return ParityResult(
        reference=len(reference),
        matched=int(len(pairs) - bad_pairs),
        unmatched_at_cut=int(at_cut),
        unmatched=int(lonely + bad_pairs),
        max_box_diff=max((d for _, _, d in pairs), default=0.0),
        max_score_diff=float(max((abs(ref_scores[i] - got_scores[j]) for i, j, _ in pairs), default=0.0)),
        min_mask_iou=float(min(ious, default=1.0)),
        max_keypoint_diff=float(max((d.max(initial=0.0) for d in untied), default=0.0)),
        keypoints=int(sum(d.size for d, _ in compared)),
        keypoint_ties=int(sum(t.sum() for _, t in compared)),
        max_keypoint_ties=tol.keypoint_ties,
    )


def compare_all(
    references: list[list[dict]], served: list[list[dict]], score_threshold: float, max_instances: int
) -> ParityResult:
    results = [compare(r, s, score_threshold, max_instances) for r, s in zip(references, served, strict=True)]
    total = results[0]
    for r in results[1:]:
        total = total.merge(r)
    return total
