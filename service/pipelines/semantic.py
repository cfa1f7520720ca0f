"""Semantic segmentation: decode -> letterbox -> batched engine -> restore -> RLE/PNG."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from segserve.codecs.geometry import Letterbox
from segserve.codecs.image import decode_image
from segserve.codecs.masks import encode_label_png, semantic_segments
from segserve.engine import Engine
from segserve.errors import BadParameter
from segserve.metrics import BatcherMetrics
from segserve.pipelines.base import ImageResult, OutputFormat, Timing
from segserve.contract.model_config import ModelConfig
from segserve.repository import ModelEntry
from segserve.scheduler import BatchPolicy, DynamicBatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    tensor: np.ndarray  # (3, H, W) uint8 at model input size
    letterbox: Letterbox


class SemanticModel:
    """One semantic model version: its engine instances behind one dynamic batcher."""

    def __init__(self, entry: ModelEntry, engines: list[Engine], codec_pool: Executor, observer: BatcherMetrics, max_pixels: int):
        self.entry = entry
        self.config = entry.config
        self.engine_info = engines[0].info
        self._engines = engines
        self._pool = codec_pool
        self._max_pixels = max_pixels
        policy = BatchPolicy(
            max_batch_size=self.config.max_batch_size,
            max_queue_delay_s=self.config.dynamic_batching.max_queue_delay_ms / 1000.0,
            max_queue_size=self.config.dynamic_batching.max_queue_size,
        )
        self.batcher: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher(
            [self._runner(e) for e in engines], policy, name=self.config.name, observer=observer
        )

    # -- engine side (runs on the instance thread) ------------------------------------
    def _runner(self, engine: Engine):
        def run(batch: list[np.ndarray]) -> list[np.ndarray]:
            return list(infer_labels(engine, self.config, np.stack(batch)))

        return run

    async def start(self, warmup: bool) -> None:
        if warmup:
            loop = asyncio.get_running_loop()
            spec = self.config.input
            for engine in self._engines:  # first runs allocate arenas / build kernels
                for n in sorted({1, self.config.max_batch_size}):
                    zeros = np.zeros((n, 3, spec.height, spec.width), dtype=spec.dtype)
                    await loop.run_in_executor(None, engine.infer, {spec.name: zeros})
        self.batcher.start()

    async def stop(self, drain_timeout_s: float) -> None:
        await self.batcher.stop(drain_timeout_s)
        for engine in self._engines:
            engine.close()

    # -- request side ----------------------------------------------------------------
    def parse_options(self, query: dict[str, str]) -> None:
        unknown = set(query) - {"model", "format", "timeout_ms"}
        if unknown:
            raise BadParameter(f"unknown query parameter(s) for a semantic model: {sorted(unknown)}")

    def _prepare(self, data: bytes) -> Prepared:
        spec = self.config.input
        decoded = decode_image(data, self._max_pixels, lambda h, w: Letterbox.fit(h, w, spec).min_decode_size())
        box = Letterbox.fit(decoded.height, decoded.width, spec)
        return Prepared(box.apply(decoded.rgb, spec.pad_value), box)

    def _finish(self, labels: np.ndarray, box: Letterbox, fmt: OutputFormat) -> tuple[np.ndarray, dict, bytes | None]:
        full = box.restore(labels)
        if fmt == OutputFormat.png:
            return full, {}, encode_label_png(full)
        return full, {"segments": semantic_segments(full, self.config.classes)}, None

    async def segment_image(self, data: bytes, options: None, fmt: OutputFormat, deadline: float) -> ImageResult:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._pool, self._prepare, data)
        done = await self.batcher.submit(prepared.tensor, deadline)
        full, body, png = await loop.run_in_executor(self._pool, self._finish, done.value, prepared.letterbox, fmt)
        box = prepared.letterbox
        return ImageResult(box.src_w, box.src_h, Timing(done.queue_s, done.compute_s, done.batch_size), body, png, full)


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
