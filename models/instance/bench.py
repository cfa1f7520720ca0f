"""CPU throughput of the instance serving paths, measured side by side in one run.

    nice -n 10 .venv/bin/python -m segserve_models.instance.bench            # both models, 2 threads
    .venv/bin/python -m segserve_models.instance.bench --models maskrcnn_mobilenet_v3_large_fpn --batches 1,4

Paths, each from uint8 RGB images to served instances (boxes, labels, scores, COCO RLE):

- split:  preprocess + collate -> backbone.onnx on ONNX Runtime (batched) -> torch heads
          -> paste-to-RLE (segserve.codecs.box_masks)
- whole:  model_full.onnx on ONNX Runtime, one image per run -> paste-to-RLE
- eager:  torchvision's MaskRCNN forward (batched, pastes full-size masks) -> threshold
          -> pycocotools encode

Weights are random (made detector-like) unless --weights names a checkpoint. Random
detectors keep ~100 boxes per image, and the mask head's cost is per instance (~0.5
GFLOP each for the 256-channel head), so --instances caps what every path keeps (the
RoI heads' detections_per_img; COCO images hold ~7 objects) and every path serves all
of those. Also times paste-to-RLE alone for 100 instances at 1280x720.

On a 2-core machine shared with other work, --threads 1 gives steadier and higher figures:
torch's 2 OpenMP threads wait on each other whenever another process holds a core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import OnnxRuntimeOptions
from segserve.engine.onnxruntime import OnnxRuntimeEngine
from segserve.graphs import zoo
from segserve.graphs.maskrcnn import MaskRCNNHeads
from segserve.codecs.box_masks import masks_to_rles
from segserve.codecs.rcnn_input import collate
from segserve.pipelines.instance.runner import SplitRunner, WholeGraphRunner
from segserve_models.export import resolve_weights, sample_images
from segserve_models.instance.export import export_backbone, export_whole_graph
from segserve_models.instance.parity import eager_instances
from segserve_models.instance.random_init import lively_random_init
from segserve_models.weights import WeightsSpec

# architecture -> (min_size, max_size): ResNet-50 at a modest 512 instead of 800/1333
SIZES = {"maskrcnn_mobilenet_v3_large_fpn": None, "maskrcnn_resnet50_fpn": (384, 512)}


def timed(fn, seconds: float, min_runs: int = 3, clock=time.perf_counter) -> float:
    """Median time of fn() after one warm-up, over >= min_runs runs and ~seconds."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def build(architecture: str, weights: str, classes: int, instances: int) -> torch.nn.Module:
    arch = zoo.get(architecture)
    state, weight_classes, _ = resolve_weights(arch, WeightsSpec.parse(weights), progress=False)
    detector = arch.build(len(weight_classes) if weight_classes else classes).eval()
    if state is None:
        lively_random_init(detector)
    else:
        detector.load_state_dict(state)
    if SIZES.get(architecture):
        detector.transform.min_size, detector.transform.max_size = (SIZES[architecture][0],), SIZES[architecture][1]
    detector.roi_heads.detections_per_img = instances
    return detector


def bench_model(architecture: str, args) -> list[dict]:
    detector = build(architecture, args.weights, classes=4, instances=args.instances)
    t, roi = detector.transform, detector.roi_heads
    params = InstanceParameters(
        min_size=t.min_size[-1], max_size=t.max_size, max_instances=roi.detections_per_img, score_threshold=roi.score_thresh
    )
    canvas = params.default_canvas()
    options = OnnxRuntimeOptions(providers=["CPUExecutionProvider"], intra_op_threads=args.threads)
    height, width = args.image
    images = [sample_images(1, height, width, seed=i)[0].permute(1, 2, 0).numpy().copy() for i in range(max(args.batches))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_backbone(detector, Path(tmp) / "backbone.onnx", canvas)
        export_whole_graph(detector, Path(tmp) / "model_full.onnx", (params.min_size, params.max_size))
        backbone = OnnxRuntimeEngine(Path(tmp) / "backbone.onnx", options)
        split = SplitRunner(backbone, MaskRCNNHeads(detector).eval(), params, canvas)
        whole = WholeGraphRunner(OnnxRuntimeEngine(Path(tmp) / "model_full.onnx", options), params)
        found = sum(len(i) for i in split(images[:1]))
        for batch in args.batches:
            some = images[:batch]
            row = {"model": architecture, "batch": batch, "instances/img": found}
            row["split"] = batch / timed(lambda: split(some), args.seconds)
            row["whole"] = batch / timed(lambda: whole(some), args.seconds)
            row["eager"] = batch / timed(lambda: eager_instances(detector, some, params.score_threshold), args.seconds)
            row["stages"] = split_stages(split, some, args.seconds)
            rows.append(row)
    return rows


def split_stages(run: SplitRunner, images: list[np.ndarray], seconds: float) -> dict[str, float]:
    """ms per image of each split-path stage, for the bottleneck's sake."""
    prepared = [run.prepare(img) for img in images]
    metas = [m for _, m in prepared]
    batch = collate([c for c, _ in prepared], metas)
    features = run.backbone.infer(batch)
    sizes, canvas = [m.resized_size for m in metas], batch["images"].shape[-2:]
    detections = run.heads(features, sizes, canvas)
    stages = {
        "preprocess": lambda: [run.prepare(img) for img in images],
        "backbone": lambda: run.backbone.infer(batch),
        "heads": lambda: run.heads(features, sizes, canvas),
        "paste+rle": lambda: [run.finish(d, m) for d, m in zip(detections, metas)],
    }
    return {name: timed(fn, seconds / 4) * 1e3 / len(images) for name, fn in stages.items()}


def bench_paste(seconds: float) -> dict[str, tuple[float, float]]:
    """(wall, CPU) ms to encode 100 instances at 1280x720, for three box-size spreads. The
    encoder is single-threaded, so its CPU time is what it costs on an idle core."""
    height, width, n = 720, 1280, 100
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    masks = ((1 - xx**2 - yy**2)[None] + 0.3 * torch.randn(n, 28, 28, generator=g)).clamp(0, 1).numpy()
    result = {}
    for lo, hi in ((16, 128), (16, 256), (64, 512)):
        wh = torch.rand(n, 2, generator=g) * (hi - lo) + lo
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([width, height]) - wh).clamp(min=0)
        boxes = torch.cat([xy, xy + wh], 1).clamp(min=0)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height)
        coverage = float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()) / (height * width)
        encode = lambda: masks_to_rles(masks, boxes.numpy(), (height, width))  # noqa: E731
        wall, cpu = (timed(encode, seconds / 2, clock=clock) * 1e3 for clock in (time.perf_counter, time.thread_time))
        result[f"box sides {lo}-{hi}px (boxes cover {coverage:.1f}x the image)"] = wall, cpu
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SIZES))
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--image", default="480x640", help="HxW of the (uint8 RGB) test images")
    parser.add_argument("--weights", default="random", help="random, or a checkpoint for the first model")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--instances", type=int, default=20, help="detections kept per image (all paths)")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.image = tuple(int(v) for v in args.image.split("x"))
    torch.set_num_threads(args.threads)

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work skews every figure alike)")
    print(f"paste-to-RLE, 100 instances at 1280x720 ({torch.get_num_threads()} torch threads):")
    for name, (wall, cpu) in bench_paste(args.seconds).items():
        print(f"  {name}: {wall:.1f} ms wall, {cpu:.1f} ms CPU")
    print(f"\nimages/s, {args.image[0]}x{args.image[1]} uint8 RGB in, instances out, {args.threads} threads")
    header = f"{'model':34} {'batch':>5} {'inst/img':>8} {'split':>7} {'whole':>7} {'eager':>7} {'split/whole':>11} {'split/eager':>11}   split ms/img: pre, backbone, heads, paste+rle"
    print(header)
    for i, architecture in enumerate(args.models.split(",")):
        if i:
            args.weights = "random"  # a checkpoint fits one architecture
        for r in bench_model(architecture, args):
            s = r["stages"]
            print(
                f"{r['model']:34} {r['batch']:>5} {r['instances/img']:>8} {r['split']:>7.2f} {r['whole']:>7.2f} {r['eager']:>7.2f}"
                f" {r['split'] / r['whole']:>11.2f} {r['split'] / r['eager']:>11.2f}"
                f"   {s['preprocess']:.0f}, {s['backbone']:.0f}, {s['heads']:.0f}, {s['paste+rle']:.0f}"
            )


if __name__ == "__main__":
    main()
