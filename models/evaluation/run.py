"""`segserve eval`: accuracy of a model, engine-direct or through a running server.

    segserve eval --model shapes_lraspp --url http://127.0.0.1:8000            # the whole stack
    segserve eval --model shapes_lraspp --repository model_repository           # engine in-process
    segserve eval --model deeplabv3_resnet50 --url ... --data voc:/data/VOCdevkit/VOC2012
    segserve eval --model maskrcnn_resnet50_fpn --url ... --data coco:/data/val2017:/data/annotations/instances_val2017.json
    segserve eval --model shapes_keypointrcnn --url ... --data synthetic:64                   # keypoint AP (OKS)
"""

from __future__ import annotations

import json
from pathlib import Path

from segserve_models.evaluation import datasets
from segserve_models.evaluation.metrics import ConfusionMatrix, InstanceAccumulator, KeypointAccumulator
from segserve_models.evaluation.predictors import EnginePredictor, HttpPredictor


def oks_sigmas(names: list[str]) -> list[float] | None:
    """Per-keypoint OKS sigmas: COCO's own for COCO's 17 person keypoints (pycocotools'
    default, None), else KEYPOINT_SIGMA for every keypoint (the synthetic polygons' corners)."""
    from segserve.graphs.zoo import COCO_KEYPOINT_NAMES
    from segserve_models.synthetic.keypoints import KEYPOINT_SIGMA

    return None if tuple(names) == COCO_KEYPOINT_NAMES else [KEYPOINT_SIGMA] * len(names)


def evaluate(predictor, samples) -> dict:
    if predictor.task == "semantic":
        matrix = ConfusionMatrix(len(predictor.classes))
        count = 0
        for sample in samples:
            matrix.update(predictor.semantic(sample), sample.labels)
            count += 1
        return {"task": "semantic", "images": count, **matrix.results(predictor.classes)}
    if predictor.task == "keypoints":
        keypoints = KeypointAccumulator(oks_sigmas(predictor.keypoint_names))
        for sample in samples:
            keypoints.add(sample.height, sample.width, sample.keypoints, predictor.keypoints(sample))
        return {"task": "keypoints", **keypoints.results(predictor.classes)}
    accumulator = InstanceAccumulator()
    for sample in samples:
        accumulator.add(sample.height, sample.width, sample.instances, predictor.instances(sample))
    return {"task": "instance", **accumulator.results(predictor.classes)}


def table(result: dict) -> str:
    if result["task"] == "semantic":
        rows = [("PA", result["pixel_accuracy"]), ("MPA", result["mean_pixel_accuracy"]), ("mIoU", result["mean_iou"])]
        rows += [(f"IoU {name}", value) for name, value in result["iou_per_class"].items()]
    elif result["task"] == "keypoints":
        rows = [("keypoint AP", result["keypoint_ap"]), ("keypoint AP50", result["keypoint_ap50"]),
                ("keypoint AP75", result["keypoint_ap75"])]
    else:
        rows = [("mask AP", result["mask_ap"]), ("mask AP50", result["mask_ap50"]), ("mask AP75", result["mask_ap75"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{result['images']} images", *(f"{name:<{width}}  {100 * value:6.2f}" for name, value in rows)]
    return "\n".join(lines)


def main(args) -> int:
    refine = getattr(args, "refine", None)
    if args.url:
        predictor = HttpPredictor(args.url, args.model, refine=refine)
    else:
        predictor = EnginePredictor(Path(args.repository), args.model, args.backend, refine=refine)
    result = evaluate(predictor, datasets.load(args.data, args.limit))
    result.update(model=args.model, data=args.data, via=args.url or f"engine ({args.backend or 'config default'})")
    if refine:
        result["refine"] = refine
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0
