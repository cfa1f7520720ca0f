"""Instance models on video: every frame through the model's own detector batcher.

Mask R-CNN has no cheap shallow/deep split worth caching (its RoI heads run per frame on
whatever the backbone found), so every frame is a keyframe. Frames of a chunk, frames of
other chunks and single images all share the model's one dynamic batcher.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, AsyncIterator

import numpy as np

from segserve.pipelines.base import OutputFormat
from segserve.pipelines.instance.model import InstanceModel, InstanceOptions
from segserve.pipelines.video_chunks import PreparedChunk, in_order
from segserve.pipelines.video_streams import KeyframePolicy, KeyframeTracker


@dataclass(frozen=True)
class DetectorFrames:
    """Frames resized as the image path resizes them; the geometry is the frame size."""

    model: InstanceModel

    def geometry(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def decode_size(self, geometry: tuple[int, int]) -> tuple[int, int]:
        return self.model.draft_size(*geometry)

    def to_input(self, geometry: tuple[int, int], rgb: np.ndarray) -> Any:
        return self.model.model_input(rgb)


class InstanceVideoModel:
    split = False
    default_policy = KeyframePolicy(1)

    def __init__(self, served: InstanceModel):
        self.served = served
        self.config = served.config
        self.mapper = DetectorFrames(served)
        self._window = 2 * self.config.max_batch_size

    def policy(self, interval: int | None, threshold: float | None) -> KeyframePolicy:
        return self.default_policy  # keyframe parameters do not apply: every frame is one

    def parse_options(self, query: dict[str, str]) -> InstanceOptions:
        return self.served.parse_options(query)

    def render(self, found: Any, chunk: PreparedChunk, fmt: OutputFormat, options: InstanceOptions) -> dict:
        """One frame's body fields at its original size (blocking: codec pool)."""
        body, png = self.served.finish(found, (chunk.height, chunk.width), options, fmt)
        return body if png is None else {"png": base64.b64encode(png).decode("ascii")}

    async def start(self, warmup: bool) -> None:
        """The served model's batcher is already running (warmed up with the model)."""

    async def stop(self, drain_timeout_s: float) -> None:
        """The model manager stops the served model and its batcher."""

    async def frames(self, chunk: PreparedChunk, tracker: KeyframeTracker, deadline: float) -> AsyncIterator[tuple[bool, Any]]:
        async for found in in_order((self._detect(item, deadline) for item in chunk.inputs), self._window):
            yield True, found

    async def _detect(self, item: Any, deadline: float) -> Any:
        return (await self.served.batcher.submit(item, deadline)).value
