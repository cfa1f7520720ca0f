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

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils

from segserve.codecs.detections import to_instances
from segserve.codecs.masks import encode_label_png
from segserve.codecs.overlay import caption, draw_instances
from segserve.codecs.rcnn_input import ImageMeta, preprocess, resize_scale, resized_size
from segserve.contract.artifacts import BACKBONE_ARTIFACT, WHOLE_GRAPH_ARTIFACT
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import ModelConfig, Task
from segserve.engine import Engine
from segserve.graphs.maskrcnn import Detections, heads_device, load_heads
from segserve.pipelines.base import Encoded, OutputFormat, Pipeline, Placement
from segserve.pipelines.instance.runner import SplitRunner, WholeGraphRunner
from segserve.pipelines.options import NumberOption
from segserve.pipelines.video.instance import InstanceVideoModel

MAX_INSTANCES_LIMIT = 1000  # the bound on max_instances, for every transport
SCORE_THRESHOLD = NumberOption("score_threshold", "minimum score (default 0.5)", float, 0.0, 1.0)
MAX_INSTANCES = NumberOption("max_instances", "at most this many (default 100)", int, 1, MAX_INSTANCES_LIMIT)
MASK_THRESHOLD = NumberOption("mask_threshold", "mask probability cut (default 0.5)", float, 0.0, 1.0)


@dataclass(frozen=True)
class InstanceOptions:
    score_threshold: float
    max_instances: int
    mask_threshold: float


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


def label_of(class_id: int, classes: list[str]) -> str:
    return classes[class_id] if class_id < len(classes) else str(class_id)


def served_instances(detections: Detections, meta: ImageMeta, options: InstanceOptions, classes: list[str]) -> list[dict]:
    """One image's detections -> the response's instances (schemas.Instance), best first."""
    return [
        {
            "class_id": i["class_id"],
            "label": label_of(i["class_id"], classes),
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


class InstanceModel(Pipeline):
    """One Mask R-CNN version: its engine instances (the split path's backbone, or the whole
    graph) behind one dynamic batcher; each image's detections are pasted per request."""

    task = Task.instance
    options = (SCORE_THRESHOLD, MAX_INSTANCES, MASK_THRESHOLD)

    async def start(self) -> None:
        config = self.config
        self.params = params = InstanceParameters.model_validate(config.parameters)
        self._defaults = InstanceOptions(params.score_threshold, params.max_instances, params.mask_threshold)
        self._canvas = (config.input.height, config.input.width) if params.default_path == "split" else None
        # Here too, not only in predict: the request side's torch work (the resize in to_input, the
        # paste in encode) gives results that depend on the thread count by an ulp or so, and with
        # --workers N it runs in a worker, where predict never does: without this, its answers
        # differ from the single process' and from gRPC's (the engine process').
        _limit_torch_threads(config, params.default_path != "split" or heads_device(config.torch.device) == "cpu")
        await super().start()
        self.video = InstanceVideoModel(self)

    def predict(self, engine: Engine) -> DetectBatch:
        self._check_engine(engine)
        config = self.config
        if self.params.default_path == "split":
            heads = load_heads(config, self.entry.version_dir, config.torch.device)
            runner = SplitRunner(engine, heads, self.params, self._canvas)
            _limit_torch_threads(config, heads.device.type == "cpu")
            return _split_detect(runner)
        _limit_torch_threads(config, True)  # only the paste runs in torch here, on CPU
        return WholeGraphRunner(engine, self.params).run_batch

    def _check_engine(self, engine: Engine) -> None:
        """The path and the ONNX graph are two settings that must agree; say so at load time
        rather than fail on the first request with a missing tensor."""
        path, onnx_file = self.params.default_path, self.config.onnxruntime.model_file
        expected = BACKBONE_ARTIFACT if path == "split" else WHOLE_GRAPH_ARTIFACT
        backend = engine.info.backend
        if path == "whole_graph" and backend != "onnxruntime":
            raise ValueError(f"parameters.default_path: whole_graph runs {WHOLE_GRAPH_ARTIFACT} on onnxruntime, not {backend}")
        if backend == "onnxruntime" and onnx_file != expected:
            raise ValueError(f"parameters.default_path: {path} needs onnxruntime.model_file: {expected} (config says {onnx_file})")

    # -- request side ----------------------------------------------------------------
    def read_options(self, query) -> InstanceOptions:
        d = self._defaults
        return InstanceOptions(
            score_threshold=SCORE_THRESHOLD.parse(query, d.score_threshold),
            max_instances=MAX_INSTANCES.parse(query, d.max_instances),
            mask_threshold=MASK_THRESHOLD.parse(query, d.mask_threshold),
        )

    def geometry(self, height: int, width: int) -> tuple[int, int]:
        return height, width  # the detector resizes each image by itself

    def decode_size(self, geometry: tuple[int, int]) -> tuple[int, int]:
        """The size the detector resizes to: a JPEG decodes at 1/2..1/8 scale down to it."""
        height, width = geometry
        p = self.params
        return resized_size(height, width, resize_scale(height, width, p.min_size, p.max_size, self._canvas))

    def to_input(self, geometry: tuple[int, int], rgb: np.ndarray):
        """split: (resized CHW, meta) for the backbone batch; whole graph: the RGB image (the graph resizes)."""
        if self.params.default_path == "split":
            p = self.params
            return preprocess(rgb, p.min_size, p.max_size, self._canvas, p.canvas_dtype)
        return rgb

    def blank_input(self):
        side = self.params.min_size
        return self.to_input((side, side), np.full((side, side, 3), 128, np.uint8))

    def encode(self, found: tuple[Detections, ImageMeta], placement: Placement, options: InstanceOptions, fmt: OutputFormat) -> Encoded:
        """Detections -> body fields, or an instance-id PNG (blocking: codec pool)."""
        detections, meta = found
        original_size = (placement.height, placement.width)
        # boxes and masks go back to the image as received, not to a smaller JPEG draft
        meta = ImageMeta(original_size=original_size, resized_size=meta.resized_size)
        instances = self.served(detections, meta, options)
        if fmt == OutputFormat.png:
            return Encoded(png=encode_label_png(instance_id_map(instances, *original_size)))
        return Encoded({"instances": instances})

    def draw(self, rgb: np.ndarray, encoded: Encoded, options: InstanceOptions) -> np.ndarray:
        drawn = encoded.body["instances"][::-1]  # best last: on top
        masks = [mask_utils.decode({"size": i["mask"]["size"], "counts": i["mask"]["counts"].encode()}).view(bool) for i in drawn]
        return draw_instances(rgb, masks, [i["box"] for i in drawn], [i["class_id"] for i in drawn],
                              [caption(i["label"], i["score"]) for i in drawn])

    def served(self, detections: Detections, meta: ImageMeta, options: InstanceOptions) -> list[dict]:
        """One image's detections -> the answer's instances, in original-image pixels."""
        return served_instances(detections, meta, options, self.config.classes)


def _split_detect(runner: SplitRunner) -> DetectBatch:
    def detect(prepared: list) -> list[tuple[Detections, ImageMeta]]:
        return list(zip(runner.run_batch(prepared), [meta for _, meta in prepared]))

    return detect
