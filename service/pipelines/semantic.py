"""Semantic segmentation: decode + letterbox -> batched engine -> restore -> RLE per class or PNG."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable

import numpy as np

from segserve.codecs.geometry import Letterbox
from segserve.codecs.masks import encode_label_png, restored_segments
from segserve.codecs.overlay import blend_labels
from segserve.contract.model_config import ModelConfig, Task
from segserve.contract.video import SemanticParameters
from segserve.engine import Engine
from segserve.pipelines.base import Encoded, OutputFormat, Pipeline, Placement
from segserve.pipelines.video.semantic import SemanticVideoModel

log = logging.getLogger(__name__)


class SemanticModel(Pipeline):
    task = Task.semantic
    label_map = True
    json_floats = False  # class ids, labels, areas and RLE strings

    async def start(self) -> None:
        self.params = SemanticParameters.model_validate(self.config.parameters)
        await super().start()
        self.video = SemanticVideoModel(self, self.params.video)
        await self.video.start()

    def response_fields(self) -> dict[str, Any]:
        return {"classes": self.config.classes}

    # -- hooks ------------------------------------------------------------------------
    def geometry(self, height: int, width: int) -> Letterbox:
        return Letterbox.fit(height, width, self.config.input)

    def decode_size(self, geometry: Letterbox) -> tuple[int, int]:
        return geometry.min_decode_size()

    def to_input(self, geometry: Letterbox, rgb: np.ndarray) -> np.ndarray:
        return geometry.apply(rgb, self.config.input.pad_value)  # (3, H, W) uint8 at the model input size

    def blank_input(self) -> np.ndarray:
        spec = self.config.input
        return np.zeros((3, spec.height, spec.width), np.uint8)

    def predict(self, engine: Engine) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
        def run(batch: list[np.ndarray]) -> list[np.ndarray]:
            return list(infer_labels(engine, self.config, np.stack(batch)))

        return run

    def encode(self, labels: np.ndarray, placement: Placement, options: None, fmt: OutputFormat) -> Encoded:
        box: Letterbox = placement.geometry
        if fmt == OutputFormat.png:
            full = box.restore(labels)
            return Encoded(png=encode_label_png(full), make_label_map=lambda: full)
        # The RLEs and areas straight from the model-resolution map's runs: no full-size pass.
        segments = restored_segments(labels, box.restore_index(), self.config.classes)
        return Encoded({"segments": segments}, make_label_map=partial(box.restore, labels))

    def draw(self, rgb: np.ndarray, encoded: Encoded, options: None) -> np.ndarray:
        return blend_labels(rgb, encoded.label_map)


def infer_labels(engine: Engine, config: ModelConfig, images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 letterboxed images -> (N, H, W) class ids at model resolution,
    whatever the graph wants in (uint8, or float32 normalised here) and gives out (labels or logits)."""
    spec = config.input
    if spec.dtype == "float32":
        std = np.asarray(spec.std, np.float32)[:, None, None]
        images = images.astype(np.float32) * (1.0 / (255.0 * std)) - np.asarray(spec.mean, np.float32)[:, None, None] / std
    out = engine.infer({spec.name: images})[config.output.name]
    if config.output.kind == "logits":
        out = out.argmax(axis=1).astype(np.uint8 if out.shape[1] <= 256 else np.int32)
    return out
