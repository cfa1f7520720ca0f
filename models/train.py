"""Train the bundled shape models on synthetic scenes, from random init, on CPU.

    python -m segserve_models.train all                  # what `make train` runs: both, ~29 min on 2 cores
    python -m segserve_models.train keypoints            # what `make train-keypoints` runs
    python -m segserve_models.train semantic|instance|keypoints [--out DIR] [--steps N] [--budget-s S] [--seed S]

`all` trains `semantic`, then `instance`, whose backbone starts from the semantic
checkpoint in --out (see ``backbone_from_semantic``); so does `keypoints` (the Keypoint
R-CNN on the polygons' corners and tips, ``segserve_models.synthetic.keypoints``). With the default fixed step counts
the run is exactly reproducible: same seed, same bytes, same sha256 (the checkpoint
records no timings; they are printed instead). ``--budget-s`` stops by wall clock instead,
which is not reproducible and is meant for experiments only.

Every batch is freshly generated from seeds derived from ``--seed`` (training seeds are
below HELD_OUT_SEED_BASE, evaluation seeds at or above it, so the two never overlap).
The checkpoint holds only tensors, lists, dicts, strings and numbers, so it loads with
``torch.load(..., weights_only=True)``; see ``save_checkpoint`` for the storage dtype.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

# On a quiet machine OpenMP threads that spin between parallel regions make a step ~1.4x
# faster than the default or sleeping threads (measured on 2 cores: 0.82 vs 1.14 s per
# semantic step). On a CPU shared with other jobs spinning wastes it instead (5-10x slower
# steps measured): run with OMP_WAIT_POLICY=PASSIVE there. libgomp reads this once, so it
# must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from torch import nn  # noqa: E402

from segserve.graphs import zoo  # noqa: E402
from segserve.graphs.serving import Normalize  # noqa: E402
from segserve_models.evaluation.metrics import KeypointAccumulator  # noqa: E402
from segserve_models.synthetic import CLASSES, Scene, make_scene  # noqa: E402
from segserve_models.synthetic.keypoints import (  # noqa: E402
    KEYPOINT_CLASSES,
    KEYPOINT_NAMES,
    KEYPOINT_SIGMA,
    KEYPOINT_SKELETON,
    NUM_KEYPOINTS,
    keypoint_truth,
)

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
HELD_OUT_SEED_BASE = 1_000_000_000
SEEDS_PER_RUN = 10_000_000  # training seeds of run `seed` are seed * SEEDS_PER_RUN + i
# Semantic training/evaluation input side: small, because training runs on 2 shared CPU cores.
SEMANTIC_INPUT = 192
IGNORE_LABEL = 255  # letterbox padding: the service crops it away, so it is not trained on
PAD_VALUE = (124, 116, 104)  # service.repository.InputSpec.pad_value: the ImageNet mean

# Checkpoints larger than this in float32 are stored as float16 (halves the file; the
# models run in float32, and load_state_dict casts on copy).
FP32_LIMIT_BYTES = 15_000_000
# Fixed step counts of `make train`: sized so both runs, with their held-out evaluations,
# take under 30 minutes on 2 quiet CPU cores (measured: docs/accuracy.md).
SEMANTIC_STEPS = 1200
INSTANCE_STEPS = 250
KEYPOINT_STEPS = 250  # `make train-keypoints`, on its own (docs/accuracy.md)


def _torch_setup(seed: int) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# How a step's scenes are rendered from their seeds, for every task: the builtin map, or the training
# run's thread pool's (``_run_training``); numpy and PIL only, no torch op, in whichever thread.
MapSeeds = Callable[[Callable[[int], Any], Iterable[int]], Iterable[Any]]


def _train_seeds(seed: int, step: int, batch: int) -> range:
    first = seed * SEEDS_PER_RUN + step * batch
    if first + batch > HELD_OUT_SEED_BASE:
        raise ValueError("training seeds would run into the held-out range; use a smaller --seed")
    return range(first, first + batch)


def held_out_seeds(count: int) -> range:
    return range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + count)


def _lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * min(progress, 1.0)))


# --- semantic --------------------------------------------------------------------------

def letterbox(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene scaled to fit a size x size square, padded bottom/right like the service does.

    Returns the (size, size, 3) uint8 image and (size, size) uint8 labels, IGNORE_LABEL in
    the padding.
    """
    height, width = scene.labels.shape
    scale = size / max(height, width)
    new_w, new_h = max(round(width * scale), 1), max(round(height * scale), 1)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = PAD_VALUE
    image[:new_h, :new_w] = np.asarray(Image.fromarray(scene.image).resize((new_w, new_h), Image.BILINEAR))
    labels = np.full((size, size), IGNORE_LABEL, np.uint8)
    labels[:new_h, :new_w] = np.asarray(Image.fromarray(scene.labels).resize((new_w, new_h), Image.NEAREST))
    return image, labels


def _letterboxed_scene(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    return letterbox(make_scene(seed), size)


def semantic_batch(seeds, size: int, map_seeds: MapSeeds = map) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images (what the serving graph receives) and int64 NHW labels."""
    pairs = list(map_seeds(partial(_letterboxed_scene, size=size), seeds))
    images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.stack([p[1] for p in pairs])).long()
    return images, labels


@torch.no_grad()
def evaluate_semantic(net: nn.Module, seeds, size: int, batch: int = 8) -> dict:
    """Pixel accuracy and mean IoU (over classes present in truth or prediction), padding excluded."""
    net.eval()
    normalize = Normalize()
    num_classes = len(CLASSES)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    seeds = list(seeds)
    for start in range(0, len(seeds), batch):
        images, labels = semantic_batch(seeds[start : start + batch], size)
        predicted = net(normalize(images))["out"].argmax(1)
        valid = labels != IGNORE_LABEL
        confusion += torch.bincount(
            labels[valid] * num_classes + predicted[valid], minlength=num_classes**2
        ).view(num_classes, num_classes)
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    iou = true_positive / union  # nan for classes absent from both truth and prediction
    return {
        "pixel_accuracy": float(true_positive.sum() / confusion.sum()),
        "mean_iou": float(np.nanmean(iou.numpy())),
        "iou_per_class": {name: round(float(v), 4) for name, v in zip(CLASSES, iou)},
    }


def train_semantic(
    steps: int, budget_s: float | None, seed: int, size: int = SEMANTIC_INPUT, batch: int = 8, lr: float = 3e-3,
    init_checkpoint: Path | None = None,
) -> tuple[nn.Module, tuple[dict, dict]]:
    net = zoo.get("lraspp_mobilenet_v3_large").build(len(CLASSES))
    hyper = {"input_size": size, "batch": batch, "peak_lr": lr, "optimizer": "AdamW", "weight_decay": 1e-4}
    if init_checkpoint is not None:
        hyper["init_from"] = _continue_from(net, init_checkpoint)
    normalize = Normalize()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)

    def make_batch(step: int, map_seeds: MapSeeds) -> tuple[torch.Tensor, torch.Tensor]:
        return semantic_batch(_train_seeds(seed, step, batch), size, map_seeds)

    def batch_loss(data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = data
        logits = net(normalize(images))["out"]
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL)

    return net, _run_training(net, optimizer, make_batch, batch_loss, steps, budget_s, lr, hyper)


# --- instance --------------------------------------------------------------------------

def instance_sample(scene: Scene) -> tuple[torch.Tensor, dict]:
    """Image as float [0, 1] CHW (torchvision detection input) and its target dict."""
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float().div(255)
    height, width = scene.labels.shape
    if scene.instances:
        boxes = torch.tensor([inst.box for inst in scene.instances], dtype=torch.float32)
        masks = torch.from_numpy(np.stack([inst.mask for inst in scene.instances])).to(torch.uint8)
    else:
        boxes = torch.zeros((0, 4), dtype=torch.float32)
        masks = torch.zeros((0, height, width), dtype=torch.uint8)
    class_ids = torch.tensor([inst.class_id for inst in scene.instances], dtype=torch.int64)
    return image, {"boxes": boxes, "labels": class_ids, "masks": masks}


def _coco_ground_truth(scenes: list[Scene]) -> COCO:
    images, annotations = [], []
    for image_id, scene in enumerate(scenes):
        height, width = scene.labels.shape
        images.append({"id": image_id, "height": height, "width": width})
        for inst in scene.instances:
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            x1, y1, x2, y2 = inst.box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": inst.class_id,
                "segmentation": rle, "area": float(inst.mask.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            })
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in enumerate(CLASSES) if i > 0],
    }
    coco.createIndex()
    return coco


@torch.no_grad()
def evaluate_instance(model: nn.Module, seeds) -> dict:
    """COCO mask AP / AP50 (and box AP50) on freshly generated held-out scenes."""
    model.eval()
    scenes = [make_scene(s) for s in seeds]
    detections = {"segm": [], "bbox": []}
    for image_id, scene in enumerate(scenes):
        output = model([instance_sample(scene)[0]])[0]
        masks = (output["masks"][:, 0] > 0.5).numpy()
        for mask, box, label, score in zip(
            masks, output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist()
        ):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            common = {"image_id": image_id, "category_id": label, "score": score}
            detections["segm"].append({**common, "segmentation": rle})
            detections["bbox"].append({**common, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    if not detections["segm"]:
        return {"mask_ap": 0.0, "mask_ap50": 0.0, "box_ap50": 0.0}
    ground_truth = _coco_ground_truth(scenes)
    stats = {}
    for kind, found in detections.items():
        coco_eval = COCOeval(ground_truth, ground_truth.loadRes(found), kind)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        stats[kind] = coco_eval.stats
    return {
        "mask_ap": round(float(stats["segm"][0]), 4),
        "mask_ap50": round(float(stats["segm"][1]), 4),
        "box_ap50": round(float(stats["bbox"][1]), 4),
    }


def _continue_from(net: nn.Module, checkpoint: Path) -> dict:
    """Load a previous run's weights to train on; returns what to record about that run.

    This lets a run that the time budget cut short be continued in a later session.
    """
    previous = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net.load_state_dict(previous["model"], strict=True)
    recorded = ("steps", "seed", "peak_lr", "held_out", "init_from")
    return {
        "file": checkpoint.name,
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "train": {k: v for k, v in previous["train"].items() if k in recorded},
    }


def backbone_from_semantic(model: nn.Module, semantic_checkpoint: Path) -> None:
    """Start the Mask R-CNN backbone from the trained LRASPP's MobileNetV3 features.

    Both nets use the same MobileNetV3-Large feature blocks (LRASPP only dilates the last
    ones, which does not change weight shapes), so this gives the detector the pretrained
    backbone that random init lacks and saves most of its training time on 2 cores.
    """
    semantic = torch.load(semantic_checkpoint, map_location="cpu", weights_only=True)["model"]
    backbone = {k.removeprefix("backbone."): v for k, v in semantic.items() if k.startswith("backbone.")}
    model.backbone.body.load_state_dict(backbone, strict=True)


def train_instance(
    steps: int, budget_s: float | None, seed: int, batch: int = 4, lr: float = 1e-3,
    semantic_checkpoint: Path | None = None,
) -> tuple[nn.Module, tuple[dict, dict]]:
    model = zoo.get("maskrcnn_mobilenet_v3_large_fpn").build(len(CLASSES))
    return model, _train_detector(model, instance_sample, steps, budget_s, seed, batch, lr, semantic_checkpoint)


def _train_detector(
    model: nn.Module, sample, steps: int, budget_s: float | None, seed: int, batch: int, lr: float,
    semantic_checkpoint: Path | None,
) -> tuple[dict, dict]:
    """A torchvision detector trained on ``sample(scene)`` -> (image, target) pairs, its body
    started from the semantic checkpoint when there is one."""
    backbone_init = "random"
    if semantic_checkpoint is not None and semantic_checkpoint.is_file():
        backbone_from_semantic(model, semantic_checkpoint)
        digest = hashlib.sha256(semantic_checkpoint.read_bytes()).hexdigest()
        backbone_init = f"{semantic_checkpoint.name} sha256 {digest}"
    print(f"backbone init: {backbone_init}", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    hyper = {
        "batch": batch, "peak_lr": lr, "optimizer": "AdamW", "weight_decay": 1e-4, "backbone_init": backbone_init
    }

    def make_batch(step: int, map_seeds: MapSeeds) -> list[tuple[torch.Tensor, dict]]:
        return [sample(scene) for scene in map_seeds(make_scene, _train_seeds(seed, step, batch))]

    def batch_loss(samples: list[tuple[torch.Tensor, dict]]) -> torch.Tensor:
        images, targets = zip(*samples)
        losses = model(list(images), list(targets))
        return sum(losses.values())

    return _run_training(model, optimizer, make_batch, batch_loss, steps, budget_s, lr, hyper)


# --- keypoints -------------------------------------------------------------------------

def keypoint_sample(scene: Scene) -> tuple[torch.Tensor, dict]:
    """Image as float [0, 1] CHW and its Keypoint R-CNN target: the polygons, their keypoints."""
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float().div(255)
    truth = keypoint_truth(scene)
    return image, {
        "boxes": torch.tensor([t.box for t in truth], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([t.class_id for t in truth], dtype=torch.int64),
        "keypoints": torch.from_numpy(np.stack([t.keypoints for t in truth]) if truth else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)),
    }


def train_keypoints(
    steps: int, budget_s: float | None, seed: int, batch: int = 4, lr: float = 1e-3,
    semantic_checkpoint: Path | None = None,
) -> tuple[nn.Module, tuple[dict, dict]]:
    model = zoo.get("keypointrcnn_mobilenet_v3_large_fpn").build(len(KEYPOINT_CLASSES), num_keypoints=NUM_KEYPOINTS)
    return model, _train_detector(model, keypoint_sample, steps, budget_s, seed, batch, lr, semantic_checkpoint)


@torch.no_grad()
def evaluate_keypoints(model: nn.Module, seeds) -> dict:
    """COCO keypoint AP (OKS, sigma KEYPOINT_SIGMA for every keypoint) on held-out scenes."""
    model.eval()
    accumulator = KeypointAccumulator([KEYPOINT_SIGMA] * NUM_KEYPOINTS)
    for seed in seeds:
        scene = make_scene(seed)
        output = model([keypoint_sample(scene)[0]])[0]
        found = zip(output["labels"].tolist(), output["scores"].tolist(), output["keypoints"].flatten(1).tolist())
        accumulator.add(*scene.labels.shape, keypoint_truth(scene), list(found))
    result = accumulator.results(KEYPOINT_CLASSES)
    return {k: round(v, 4) for k, v in result.items() if k != "images"}


# --- shared ----------------------------------------------------------------------------

def _run_training(
    net: nn.Module, optimizer, make_batch, batch_loss, steps: int, budget_s: float | None, peak_lr: float, hyper: dict
) -> tuple[dict, dict]:
    """Train until `steps` or `budget_s` seconds (if given), whichever comes first.

    Returns (what the checkpoint records, timings): timings vary from run to run, so they
    stay out of the checkpoint to keep its bytes reproducible.

    The CPU is shared, so a step's cost varies; the LR schedule follows whichever limit is
    closer (progress = max(step / steps, elapsed / budget)), so a run cut short by the
    clock still ends with a fully decayed learning rate. Runs that finish by step count
    are exactly reproducible.

    Each step's scenes are rendered at its start by two threads (scene rendering is
    single-threaded numpy/PIL), while no torch op runs: rendering the next batch during
    the step instead made runs differ in their last bits on an Intel Xeon host, where
    MKL's results move when another thread loads the cores during its calls
    (docs/accuracy.md). Batches depend only on the step number, so the threads change
    nothing in the result.
    """
    net.train()
    warmup = min(50, steps // 10 + 1)
    started, cpu_started = time.perf_counter(), time.process_time()
    recent: list[float] = []
    step = 0
    renderers = ThreadPoolExecutor(2, thread_name_prefix="render")
    while True:
        elapsed = time.perf_counter() - started
        progress = max(step / steps, elapsed / budget_s if budget_s else 0.0)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, progress, peak_lr, warmup)
        loss = batch_loss(make_batch(step, renderers.map))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # from-scratch losses spike early on; clipping keeps AdamW stable
        nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-20:]
        if step % 20 == 0:
            print(f"step {step:5d}  loss {np.mean(recent):.4f}  {elapsed:7.1f}s", flush=True)
        step += 1
    renderers.shutdown()
    recorded = {
        **hyper, "max_steps": steps, "budget_s": budget_s, "steps": step, "warmup_steps": warmup,
        "stopped_by": "steps" if step >= steps else "budget",
        "final_loss": round(float(np.mean(recent)), 4),
    }
    timings = {
        "train_wall_s": round(time.perf_counter() - started, 1),
        # CPU seconds over all threads: on a shared machine wall time overstates the cost
        "train_cpu_s": round(time.process_time() - cpu_started, 1),
    }
    return recorded, timings


def save_checkpoint(
    path: Path, net: nn.Module, architecture: str, train_info: dict, classes: list[str] = CLASSES, extra: dict | None = None
) -> None:
    """{"model", "classes", "architecture", "train"} (+ ``extra``, e.g. a keypoint model's
    "keypoints" and "skeleton"); float16 weights if float32 is too big."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    float_bytes = sum(v.numel() * 4 for v in state.values() if v.is_floating_point())
    storage = "float16" if float_bytes > FP32_LIMIT_BYTES else "float32"
    if storage == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": state, "classes": list(classes), "architecture": architecture,
         "train": {**train_info, "storage_dtype": storage}, **(extra or {})},
        path,
    )
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB, {storage})")


def write_sha256sums(directory: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(directory.glob("*.pth"))]
    (directory / "SHA256SUMS").write_text("".join(lines))


def _detector_task(train, steps: int, evaluate) -> tuple:
    """(train fn, held-out evaluation) of a detector task."""
    return (
        lambda args: train(
            args.steps or steps, args.budget_s, args.seed, lr=args.lr or 1e-3, semantic_checkpoint=args.out / "shapes_lraspp.pth"
        ),
        lambda net: evaluate(net, held_out_seeds(50)),
    )


TASKS = {
    # task: (architecture, checkpoint file, train fn, held-out evaluation)
    "semantic": (
        "lraspp_mobilenet_v3_large", "shapes_lraspp.pth",
        lambda args: train_semantic(
            args.steps or SEMANTIC_STEPS, args.budget_s, args.seed, lr=args.lr or 3e-3, init_checkpoint=args.init
        ),
        lambda net: evaluate_semantic(net, held_out_seeds(64), SEMANTIC_INPUT),
    ),
    # both detectors start from the semantic model's backbone when that was trained first
    "instance": ("maskrcnn_mobilenet_v3_large_fpn", "shapes_maskrcnn.pth",
                 *_detector_task(train_instance, INSTANCE_STEPS, evaluate_instance)),
    "keypoints": ("keypointrcnn_mobilenet_v3_large_fpn", "shapes_keypointrcnn.pth",
                  *_detector_task(train_keypoints, KEYPOINT_STEPS, evaluate_keypoints)),
}
# What a task's checkpoint holds beyond the state_dict: (classes, extra entries)
CHECKPOINT_META = {
    "keypoints": (KEYPOINT_CLASSES, {"keypoints": KEYPOINT_NAMES, "skeleton": KEYPOINT_SKELETON}),
}


def train_task(task: str, args: argparse.Namespace) -> dict:
    """Train, evaluate on held-out scenes, save the checkpoint; returns the run's timings."""
    architecture, filename, train, evaluate = TASKS[task]
    _torch_setup(args.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    net, (info, timings) = train(args)
    metrics = evaluate(net)
    info.update(seed=args.seed, held_out=metrics)
    timings.update(wall_s=round(time.perf_counter() - started, 1), cpu_s=round(time.process_time() - cpu_started, 1))
    print(f"{task}: {metrics}  {timings}", flush=True)
    classes, extra = CHECKPOINT_META.get(task, (CLASSES, None))
    save_checkpoint(args.out / filename, net, architecture, info, classes, extra)
    write_sha256sums(args.out)
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["all", *sorted(TASKS)])
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR)
    parser.add_argument("--steps", type=int, help=f"optimizer steps (default: semantic {SEMANTIC_STEPS}, "
                        f"instance {INSTANCE_STEPS}, keypoints {KEYPOINT_STEPS})")
    parser.add_argument("--budget-s", type=float, help="also stop after this many training seconds (not reproducible)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: per task)")
    parser.add_argument("--init", type=Path, help="semantic only: continue training from this checkpoint")
    args = parser.parse_args(argv)
    if args.task == "all" and (args.steps or args.lr or args.init):
        parser.error("--steps, --lr and --init apply to one task; `all` uses each task's defaults")
    started = time.perf_counter()
    for task in ("semantic", "instance") if args.task == "all" else (args.task,):
        train_task(task, args)
    print(f"total wall {time.perf_counter() - started:.0f}s", flush=True)
    print((args.out / "SHA256SUMS").read_text(), end="")


if __name__ == "__main__":
    main()
