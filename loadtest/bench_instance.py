"""Mask R-CNN served vs its batch step alone, and what answering 100 instances costs.

    nice -n 10 .venv/bin/python -m segserve_loadtest.bench_instance --weights bundled:shapes_maskrcnn

1. Batch step: what the service's batcher runs per batch on the split path (collate ->
   backbone on ONNX Runtime -> torch heads), on one prepared 640x480 scene repeated to
   batch sizes 1..max, with the served config's torch threads. Its best images/s is the
   ceiling the service is judged against.
2. Service: ``loadtest.bench_service.bench_service`` (ab -k -l at concurrency 1/8/32, the
   server's mean batch, queue and compute time from /metrics), same JPEG.
3. Answer: 100 instances at 1280x720 through the service's own steps -- paste to RLE
   (``served_instances``), JSON rendering (``render_json``), the instance-id PNG -- and
   the response sizes. One thread, as on the codec pool.

Weights matter here, unlike for semantic models: the heads' and the paste's cost grows
with the instances found, so the bundled shapes model on shape scenes is the default.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from segserve.codecs.masks import encode_label_png
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import latest_version
from segserve.engine import create_engine
from segserve.graphs.maskrcnn import Detections
from segserve.pipelines import ImageResult, Timing
from segserve.pipelines.base import Encoded, render_json
from segserve.pipelines.instance.model import (
    InstanceModel,
    InstanceOptions,
    instance_id_map,
    served_instances,
)
from segserve.codecs.rcnn_input import ImageMeta
from segserve.graphs.maskrcnn import load_heads
from segserve.pipelines.instance.runner import SplitRunner
from segserve.repository import ModelEntry, scan
from segserve_loadtest.bench_service import levels_markdown, service_level
from segserve_loadtest.payloads import Payload
from segserve_loadtest.server import SegserveProcess
from segserve_models.instance.bench import timed
from segserve_models.instance.export import export_instance_model
from segserve_models.synthetic import make_scene
from segserve_models.weights import WeightsSpec


def ensure_model(repository: Path, architecture: str, name: str, weights: str) -> ModelEntry:
    if not ((repository / name).is_dir() and latest_version(repository / name)):
        export_instance_model(architecture, repository, WeightsSpec.parse(weights), name=name, progress=False)
    return next(e for e in scan(repository) if e.config.name == name)


def bench_batch_step(entry: ModelEntry, image: np.ndarray, min_seconds: float) -> list[dict]:
    config = entry.config
    if config.torch.threads:  # what the service does for its heads (service.pipelines.instance)
        torch.set_num_threads(config.torch.threads)
    params = InstanceParameters.model_validate(config.parameters)
    engine = create_engine(config, entry.version_dir, "onnxruntime")
    runner = SplitRunner(engine, load_heads(config, entry.version_dir, config.torch.device), params, (config.input.height, config.input.width))
    prepared = runner.prepare(image)
    rows, size = [], 1
    while size <= config.max_batch_size:
        batch = [prepared] * size
        seconds = timed(lambda: runner.run_batch(batch), min_seconds)
        rows.append({"batch_size": size, "instances": 1, "images_per_s": size / seconds, "ms_per_batch": 1000 * seconds})
        size *= 2
    engine.close()
    return rows


def bench_answer(entry: ModelEntry, seconds: float, height: int = 720, width: int = 1280, n: int = 100) -> dict:
    """ms and bytes to answer an image with ``n`` instances: boxes 16-128 px a side, solid
    28x28 mask probabilities with noise (like a trained head's), all above the thresholds."""
    classes = entry.config.classes
    pipeline = InstanceModel(entry, context=None)  # for its response fields only: never started
    rng = np.random.default_rng(0)
    sides = rng.uniform(16, 128, (n, 2))
    corners = rng.uniform(0, 1, (n, 2)) * (np.array([width, height]) - sides)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 28), np.linspace(-1, 1, 28), indexing="ij")
    detections = Detections(
        boxes=np.concatenate([corners, corners + sides], 1).astype(np.float32),
        labels=rng.integers(1, len(classes), n),
        scores=np.sort(rng.uniform(0.5, 1, n)).astype(np.float32)[::-1].copy(),
        masks=np.clip(1 - xx**2 - yy**2 + 0.3 * rng.standard_normal((n, 28, 28)), 0, 1).astype(np.float32),
    )
    meta = ImageMeta(original_size=(height, width), resized_size=(height, width))
    options = InstanceOptions(score_threshold=0.5, max_instances=n, mask_threshold=0.5)

    def answer() -> list[dict]:
        return served_instances(detections, meta, options, classes)

    def render(instances: list[dict]) -> bytes:
        return render_json(pipeline, ImageResult(width, height, Timing(0, 0, 1), Encoded({"instances": instances})), 0.0)

    def png(instances: list[dict]) -> bytes:
        return encode_label_png(instance_id_map(instances, height, width))

    instances = answer()
    assert len(instances) == n
    return {
        "image": f"{n} instances at {width}x{height}",
        "paste_rle_ms": timed(answer, seconds) * 1e3,
        "render_json_ms": timed(lambda: render(instances), seconds) * 1e3,
        "png_ms": timed(lambda: png(instances), seconds) * 1e3,
        "json_bytes": len(render(instances)),
        "png_bytes": len(png(instances)),
    }


def answer_table(a: dict) -> str:
    return "\n".join([
        f"Answering {a['image']} (one thread, as on the codec pool):",
        "",
        "| paste + RLE ms | JSON render ms | JSON bytes | instance-id PNG ms | PNG bytes |",
        "|---:|---:|---:|---:|---:|",
        f"| {a['paste_rle_ms']:.1f} | {a['render_json_ms']:.1f} | {a['json_bytes']} | {a['png_ms']:.1f} | {a['png_bytes']} |",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.bench_instance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="maskrcnn_mobilenet_v3_large_fpn", help="architecture to export and serve")
    parser.add_argument("--weights", default="bundled:shapes_maskrcnn", help="random, bundled:NAME or PATH")
    parser.add_argument("--repository", type=Path, default=Path(".cache/bench_repo"))
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests", type=int, default=100, help="ab requests per level (at least 4x the concurrency)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch-step and encode measurement")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/instance"))
    args = parser.parse_args(argv)

    name = f"{args.model}_{args.weights.replace(':', '_').replace('/', '_')}"
    entry = ensure_model(args.repository, args.model, name, args.weights)
    scene = make_scene(0, 480, 640).image  # shapes the bundled model knows, on a textured background
    buffer = io.BytesIO()
    Image.fromarray(scene).save(buffer, format="JPEG", quality=85)
    payload = Payload("shapes_640x480.jpg", "image/jpeg", buffer.getvalue())

    engine_rows = bench_batch_step(entry, scene, args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    levels = [int(v) for v in args.levels.split(",")]
    with SegserveProcess(args.repository, args.out / "bench_server.log", models=[name]) as server, httpx.Client(timeout=60) as client:
        service_rows = [service_level(server, client, name, payload, c, args.requests) for c in levels]
    best = max(r["images_per_s"] for r in engine_rows)
    params = InstanceParameters.model_validate(entry.config.parameters)
    result = {
        "model": f"{name} (split path)",
        "input": f"resize {params.min_size}/{params.max_size}",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, load {os.getloadavg()[0]:.1f}",
        "image": f"{payload.name} ({len(payload.body)} bytes)",
        "engine": engine_rows,
        "engine_best_images_per_s": best,
        "service": service_rows,
        "ratio": service_rows[-1]["requests_per_s"] / best,
        "answer": bench_answer(entry, args.seconds),
    }
    (args.out / "bench_service.json").write_text(json.dumps(result, indent=2))
    text = levels_markdown(result) + "\n\n" + answer_table(result["answer"])
    (args.out / "bench_service.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
