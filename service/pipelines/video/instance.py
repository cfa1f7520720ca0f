"""Instance models on video: every frame through the model's own detector batcher.

Mask R-CNN has no cheap shallow/deep split worth caching (its RoI heads run per frame on
whatever the backbone found), so every frame is a keyframe. Frames of a chunk, frames of
other chunks and single images all share the model's one dynamic batcher.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from segserve.pipelines.base import PartStatus
from segserve.pipelines.video.chunks import PreparedChunk, in_order
from segserve.pipelines.video.streams import KeyframePolicy, KeyframeTracker


class InstanceVideoModel:
    split = False
    default_policy = KeyframePolicy(1)

    def __init__(self, pipeline):
        self.pipeline = pipeline  # segserve.pipelines.instance.model.InstanceModel, started
        self.window = 2 * pipeline.config.max_batch_size  # frames of a chunk in flight at once

    def policy(self, interval: int | None, threshold: float | None) -> KeyframePolicy:
        return self.default_policy  # keyframe parameters do not apply: every frame is one

    def parts(self) -> list[PartStatus]:
        return []

    async def stop(self) -> None:
        """The pipeline stops its own batcher."""

    async def frames(self, chunk: PreparedChunk, tracker: KeyframeTracker, deadline: float) -> AsyncIterator[tuple[bool, Any]]:
        async for found in in_order((self._detect(item, deadline) for item in chunk.inputs), self.window):
            yield True, found

    async def _detect(self, item: Any, deadline: float) -> Any:
        return (await self.pipeline.batcher.submit(item, deadline)).value
