"""Instance segmentation (Mask R-CNN): decode -> resize (codec pool) -> batched detector
(engine thread) -> paste to COCO RLE or an instance-id PNG (codec pool).

The detector runs one of two paths (``parameters.default_path`` in config.yaml):

- ``split`` (default): the backbone graph on the engine (``backbone.onnx`` on ONNX Runtime,
  or the torch backend), batched across requests, then the RPN/RoI heads in torch
  (``segserve.pipelines.instance.runner.SplitRunner``).
- ``whole_graph``: ``model_full.onnx`` on ONNX Runtime, one image per run even inside a
  batch (``WholeGraphRunner``): the exported graph holds batch 1.

Either way the batcher's runner returns each image's detections in network-input
coordinates; pasting masks into the original image happens per request, off the engine
thread, so the engine is never busy with per-request pixel work.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils

from segserve.contract.artifacts import BACKBONE_ARTIFACT, WHOLE_GRAPH_ARTIFACT

from segserve.contract.instance import InstanceParameters
from segserve.pipelines.instance.paste import to_instances
from segserve.pipelines.instance.preprocess import ImageMeta, resize_scale
from segserve.pipelines.instance.runner import SplitRunner, WholeGraphRunner, load_heads
from segserve.graphs.maskrcnn import Detections
from segserve.codecs.image import decode_image
from segserve.codecs.masks import encode_label_png
from segserve.engine import Engine
from segserve.errors import BadParameter
from segserve.metrics import BatcherMetrics
from segserve.pipelines.base import ImageResult, OutputFormat, Timing
from segserve.pipelines.options import parse_number
from segserve.contract.model_config import ModelConfig
from segserve.repository import ModelEntry
from segserve.scheduler import BatchPolicy, DynamicBatcher


COMMON_PARAMS = {"model", "format", "timeout_ms"}
MAX_INSTANCES_LIMIT = 1000  # the HTTP route's bound on max_instances, for every transport


@dataclass(frozen=True)
class InstanceOptions:
    score_threshold: float
    max_instances: int
    mask_threshold: float


@dataclass(frozen=True)
class Pending:
    """A decoded request between the codec pool and the batcher."""

    item: object  # what the path's runner takes: (resized, meta) for split, the RGB image for whole graph
    original_size: tuple[int, int]  # (h, w) as received; a JPEG may have been decoded smaller


# The batcher's runner: a batch of prepared items -> each image's detections and the sizes
# they refer to.
DetectBatch = Callable[[list], list[tuple[Detections, ImageMeta]]]


def instance_id_map(instances: list[dict], height: int, width: int) -> np.ndarray:
    """(h, w) map: 0 = background, i = the i-th instance (1-based, JSON order = score order).
    Where masks overlap the higher-score instance wins: instances are painted from the
    lowest score up, each over the ones before. uint8 up to 255 instances, else uint16."""
    # pycocotools decodes column-major (Fortran) arrays: paint a (w, h) map through their
    # transposes, so every mask is read and written in memory order. The full-image decode
    # is most of the cost (~1.5 ms per instance at 1280x720).
    ids_t = np.zeros((width, height), dtype=np.uint8 if len(instances) <= 255 else np.uint16)
    for i in range(len(instances), 0, -1):
        rle = instances[i - 1]["mask"]
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.copyto(ids_t, i, where=mask.T.view(bool))
    return np.ascontiguousarray(ids_t.T)


def served_instances(detections: Detections, meta: ImageMeta, options: InstanceOptions, classes: list[str]) -> list[dict]:
    """One image's detections -> the response's instances (schemas.Instance), best first."""
    return [
        {
            "class_id": i["class_id"],
            "label": classes[i["class_id"]] if i["class_id"] < len(classes) else str(i["class_id"]),
            "score": i["score"],
            "box": i["box"],
            "mask": i["rle"],
        }
        for i in to_instances(detections, meta, options.score_threshold, options.max_instances, options.mask_threshold)
    ]


def _limit_torch_threads(config: ModelConfig, heads_on_cpu: bool) -> None:
    """``config.torch.threads`` for the heads and the paste, which run in torch on every
    backend. Process-wide (torch has one intra-op pool), as for the torch engine."""
    if heads_on_cpu and config.torch.threads:
        torch.set_num_threads(config.torch.threads)


class InstanceModel:
    """One Mask R-CNN version: its engine instances behind one dynamic batcher."""

    def __init__(self, entry: ModelEntry, engines: list[Engine], codec_pool: Executor, observer: BatcherMetrics, max_pixels: int):
        self.entry = entry
        self.config = config = entry.config
        self.params = InstanceParameters.model_validate(config.parameters)
        self.engine_info = engines[0].info
        self._engines = engines
        self._pool = codec_pool
        self._max_pixels = max_pixels
        self._defaults = InstanceOptions(self.params.score_threshold, self.params.max_instances, self.params.mask_threshold)
        self._check_engines(engines)
        if self.params.default_path == "split":
            canvas = (config.input.height, config.input.width)
            runners = [SplitRunner(e, load_heads(config, entry.version_dir, config.torch.device), self.params, canvas) for e in engines]
            _limit_torch_threads(config, runners[0].heads.device.type == "cpu")
            # (h, w, 3) uint8 RGB -> what the batcher takes; stateless: any runner's will do
            self.model_input = runners[0].prepare
            self._draft_canvas: tuple[int, int] | None = canvas
            self._detect = [_split_detect(r) for r in runners]
        else:
            _limit_torch_threads(config, True)  # only the paste runs in torch here, on CPU
            self.model_input = lambda rgb: rgb  # the graph resizes by itself
            self._draft_canvas = None
            self._detect = [WholeGraphRunner(e, self.params).run_batch for e in engines]
        policy = BatchPolicy(
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.dynamic_batching.max_queue_delay_ms / 1000.0,
            max_queue_size=config.dynamic_batching.max_queue_size,
        )
        self.batcher: DynamicBatcher[object, tuple[Detections, ImageMeta]] = DynamicBatcher(
            self._detect, policy, name=config.name, observer=observer
        )

    def _check_engines(self, engines: list[Engine]) -> None:
        """The path and the ONNX graph are two settings that must agree; say so at load time
        rather than fail on the first request with a missing tensor."""
        path, onnx_file = self.params.default_path, self.config.onnxruntime.model_file
        expected = BACKBONE_ARTIFACT if path == "split" else WHOLE_GRAPH_ARTIFACT
        backend = engines[0].info.backend
        if path == "whole_graph" and backend != "onnxruntime":
            raise ValueError(f"parameters.default_path: whole_graph runs {WHOLE_GRAPH_ARTIFACT} on onnxruntime, not {backend}")
        if backend == "onnxruntime" and onnx_file != expected:
            raise ValueError(f"parameters.default_path: {path} needs onnxruntime.model_file: {expected} (config says {onnx_file})")

    async def start(self, warmup: bool) -> None:
        if warmup:  # first runs allocate arenas and build kernels, in the backbone and in the heads
            loop = asyncio.get_running_loop()
            side = self.params.min_size
            blank = np.full((side, side, 3), 128, np.uint8)
            for detect in self._detect:
                for n in sorted({1, self.config.max_batch_size}):
                    await loop.run_in_executor(None, detect, [self.model_input(blank)] * n)
        self.batcher.start()

    async def stop(self, drain_timeout_s: float) -> None:
        await self.batcher.stop(drain_timeout_s)
        for engine in self._engines:
            engine.close()

    # -- request side ----------------------------------------------------------------
    def parse_options(self, query: dict[str, str]) -> InstanceOptions:
        unknown = set(query) - COMMON_PARAMS - {"score_threshold", "max_instances", "mask_threshold"}
        if unknown:
            raise BadParameter(f"unknown query parameter(s) for an instance model: {sorted(unknown)}")
        d = self._defaults
        return InstanceOptions(
            score_threshold=parse_number(query, "score_threshold", float, 0.0, 1.0, d.score_threshold),
            max_instances=parse_number(query, "max_instances", int, 1, MAX_INSTANCES_LIMIT, d.max_instances),
            mask_threshold=parse_number(query, "mask_threshold", float, 0.0, 1.0, d.mask_threshold),
        )

    def draft_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the detector resizes to: a JPEG decodes at 1/2..1/8 scale down to it."""
        p = self.params
        scale = resize_scale(height, width, p.min_size, p.max_size, self._draft_canvas)
        return math.floor(height * scale), math.floor(width * scale)

    def _prepare(self, data: bytes) -> Pending:
        decoded = decode_image(data, self._max_pixels, self.draft_size)
        return Pending(self.model_input(decoded.rgb), (decoded.height, decoded.width))

    def finish(
        self, found: tuple[Detections, ImageMeta], original_size: tuple[int, int], options: InstanceOptions, fmt: OutputFormat
    ) -> tuple[dict, bytes | None]:
        """Detections -> body fields, or an instance-id PNG (blocking: codec pool)."""
        detections, meta = found
        # boxes and masks go back to the image as received, not to a smaller JPEG draft
        meta = ImageMeta(original_size=original_size, resized_size=meta.resized_size)
        instances = served_instances(detections, meta, options, self.config.classes)
        if fmt == OutputFormat.png:
            return {}, encode_label_png(instance_id_map(instances, *original_size))
        return {"instances": instances}, None

    async def segment_image(self, data: bytes, options: InstanceOptions, fmt: OutputFormat, deadline: float) -> ImageResult:
        loop = asyncio.get_running_loop()
        pending = await loop.run_in_executor(self._pool, self._prepare, data)
        done = await self.batcher.submit(pending.item, deadline)
        body, png = await loop.run_in_executor(self._pool, self.finish, done.value, pending.original_size, options, fmt)
        height, width = pending.original_size
        return ImageResult(width, height, Timing(done.queue_s, done.compute_s, done.batch_size), body, png)


def _split_detect(runner: SplitRunner) -> DetectBatch:
    def detect(prepared: list) -> list[tuple[Detections, ImageMeta]]:
        return list(zip(runner.run_batch(prepared), [meta for _, meta in prepared]))

    return detect
