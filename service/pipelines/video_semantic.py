"""Semantic models on video: keyframe feature reuse through the LRASPP video split.

A model exported with the video split (``parameters.video``, see models/video_split.py)
runs three engines, each behind its own dynamic batcher, so frames of one chunk and frames
of different streams share batches::

    every frame:   shallow(frame)           -> low
    keyframes:     deep(low)                -> deep   (kept with low in the stream's state)
    keyframes:     fuse(low, deep)          -> labels (= the full model's)
    other frames:  correct(low, deep and low of the last keyframe) -> labels
                   (a trained correction of the stale deep features; a model without one
                   runs fuse(low, deep of the last keyframe) instead)

Keyframe decisions need only the shallow features, so they are made in frame order while
later frames are still in the shallow batcher, and a chunk's frames never wait for each
other except for the one deep run of their keyframe. Any other semantic model runs every
frame through its image batcher (every frame is a keyframe).
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable

import numpy as np

from segserve.codecs.geometry import Letterbox
from segserve.codecs.masks import encode_label_png, semantic_segments
from segserve.engine import Engine
from segserve.metrics import Metrics
from segserve.pipelines.base import OutputFormat, ServedModel
from segserve.pipelines.video_chunks import LetterboxFrames, PreparedChunk, in_order
from segserve.pipelines.video_streams import KeyframePolicy, KeyframeTracker
from segserve.scheduler import BatchPolicy, DynamicBatcher

SPLIT_PARTS = {  # part -> (input tensor names, output tensor name); models/video_split.py writes them
    "shallow": (("images",), "low"),
    "deep": (("low",), "deep"),
    "fuse": (("low", "deep"), "labels"),
    "correct": (("low", "deep", "key_low"), "labels"),  # only in splits exported with a correction
}


def split_parts(video: dict) -> list[str]:
    """The parts a model's video split (its ``parameters.video``) has."""
    return [part for part in SPLIT_PARTS if part != "correct" or video.get("correction")]


@dataclass(frozen=True)
class KeyFeatures:
    """What a keyframe leaves for the frames after it."""

    low: np.ndarray
    deep: np.ndarray

    def copy(self) -> "KeyFeatures":  # batch outputs are views into the whole batch's array
        return KeyFeatures(np.array(self.low), np.array(self.deep))


def render_labels(labels: np.ndarray, box: Letterbox, fmt: OutputFormat, classes: list[str]) -> dict:
    """One frame's body fields at its original size (blocking: codec pool)."""
    full = box.restore(labels)
    if fmt == OutputFormat.png:
        return {"png": base64.b64encode(encode_label_png(full)).decode("ascii")}
    return {"segments": semantic_segments(full, classes)}


def _batch_runner(engine: Engine, inputs: tuple[str, ...], output: str):
    """Batches of same-shaped tuples of arrays (one per engine input) -> one output each."""

    def run(batch: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        feed = {name: np.stack([item[i] for item in batch]) for i, name in enumerate(inputs)}
        return list(engine.infer(feed)[output])

    return run


class _SplitRun:
    """One chunk through the split model. ``frame`` must be called in frame order: it chains
    each frame's keyframe decision after the previous frame's."""

    def __init__(self, parts: dict[str, DynamicBatcher], tracker: KeyframeTracker, deadline: float):
        self._parts = parts
        self._tracker = tracker
        self._deadline = deadline
        loop = asyncio.get_running_loop()
        self._key = loop.create_future()  # KeyFeatures of the latest keyframe decided so far
        self._key.set_result(tracker.keyframe_cache)
        self._decided: asyncio.Future | None = None
        self._key_tasks: list[asyncio.Task] = []

    def frame(self, tensor: np.ndarray) -> Awaitable[tuple[bool, np.ndarray]]:
        previous = self._decided
        self._decided = asyncio.get_running_loop().create_future()
        return self._frame(tensor, previous, self._decided)

    async def _frame(self, tensor: np.ndarray, previous: asyncio.Future | None, decided: asyncio.Future):
        low = (await self._parts["shallow"].submit((tensor,), self._deadline)).value
        if previous is not None:
            await previous
        keyframe = self._tracker.observe(low)
        if keyframe:
            self._key = asyncio.ensure_future(self._key_features(low))
            self._key_tasks.append(self._key)
        pending_key = self._key
        decided.set_result(None)
        # shield: a cancelled frame must not cancel the deep run other frames share
        key: KeyFeatures = await asyncio.shield(pending_key)
        if keyframe or "correct" not in self._parts:
            labels = (await self._parts["fuse"].submit((low, key.deep), self._deadline)).value
        else:
            labels = (await self._parts["correct"].submit((low, key.deep, key.low), self._deadline)).value
        return keyframe, labels

    async def _key_features(self, low: np.ndarray) -> KeyFeatures:
        return KeyFeatures(low, (await self._parts["deep"].submit((low,), self._deadline)).value)

    async def latest_key(self) -> KeyFeatures:
        return await self._key

    def cancel(self) -> None:
        for task in self._key_tasks:
            task.cancel()


class SemanticVideoModel:
    """A served semantic model as the video route sees it: its split engines when it has
    them, else its image batcher."""

    def __init__(self, served: ServedModel, parts: dict[str, list[Engine]] | None, metrics: Metrics):
        self.served = served
        self.config = served.entry.config
        self.mapper = LetterboxFrames(self.config.input)
        self.split = parts is not None
        params = self.config.parameters.get("video", {})
        if self.split:
            self.default_max_interval = int(params.get("max_keyframe_interval", 16))
            threshold = params.get("keyframe_threshold")
            self.default_policy = KeyframePolicy(self.default_max_interval, None if threshold is None else float(threshold))
        else:
            self.default_max_interval = 1
            self.default_policy = KeyframePolicy(1)
        self._engines = parts or {}
        policy = BatchPolicy(
            max_batch_size=self.config.max_batch_size,
            max_queue_delay_s=self.config.dynamic_batching.max_queue_delay_ms / 1000.0,
            max_queue_size=self.config.dynamic_batching.max_queue_size,
        )
        self._parts = {
            part: DynamicBatcher(
                [_batch_runner(e, *SPLIT_PARTS[part]) for e in engines],
                policy,
                name=f"{self.config.name}/{part}",
                observer=metrics.batch_observer(f"{self.config.name}/{part}"),
            )
            for part, engines in self._engines.items()
        }
        self._window = 2 * self.config.max_batch_size

    def policy(self, interval: int | None, threshold: float | None) -> KeyframePolicy:
        """The request's keyframe policy: a fixed interval, a threshold (adaptive, with the
        interval or the model's default as the longest gap), or the model's default."""
        if interval is None and threshold is None:
            return self.default_policy
        return KeyframePolicy(interval or self.default_max_interval, threshold)

    def parse_options(self, query: dict[str, str]) -> None:
        return self.served.parse_options(query)  # semantic models take none: rejects any

    def render(self, labels: np.ndarray, chunk: PreparedChunk, fmt: OutputFormat, options: None) -> dict:
        """One frame's body fields (blocking: codec pool)."""
        return render_labels(labels, chunk.geometry, fmt, self.config.classes)

    async def start(self, warmup: bool) -> None:
        if warmup and self.split:
            loop = asyncio.get_running_loop()
            spec = self.config.input
            for i, shallow in enumerate(self._engines["shallow"]):
                for n in sorted({1, self.config.max_batch_size}):  # first runs allocate arenas / build kernels
                    images = np.zeros((n, 3, spec.height, spec.width), np.uint8)
                    low = (await loop.run_in_executor(None, shallow.infer, {"images": images}))["low"]
                    deep = (await loop.run_in_executor(None, self._engines["deep"][i].infer, {"low": low}))["deep"]
                    await loop.run_in_executor(None, self._engines["fuse"][i].infer, {"low": low, "deep": deep})
                    if "correct" in self._engines:
                        await loop.run_in_executor(None, self._engines["correct"][i].infer, {"low": low, "deep": deep, "key_low": low})
        for batcher in self._parts.values():
            batcher.start()

    async def stop(self, drain_timeout_s: float) -> None:
        await asyncio.gather(*(b.stop(drain_timeout_s) for b in self._parts.values()))
        for engines in self._engines.values():
            for engine in engines:
                engine.close()

    async def frames(self, chunk: PreparedChunk, tracker: KeyframeTracker, deadline: float) -> AsyncIterator[tuple[bool, np.ndarray]]:
        """(keyframe, labels at model input size) per frame, in order. When it is exhausted,
        ``tracker`` holds the state the stream continues from."""
        if not self.split:
            async for labels in in_order((self._whole_frame(t, deadline) for t in chunk.inputs), self._window):
                yield True, labels
            return
        run = _SplitRun(self._parts, tracker, deadline)
        try:
            async for result in in_order((run.frame(t) for t in chunk.inputs), self._window):
                yield result
            tracker.keyframe_cache = (await run.latest_key()).copy()
        finally:
            run.cancel()

    async def _whole_frame(self, tensor: np.ndarray, deadline: float) -> np.ndarray:
        return (await self.served.batcher.submit(tensor, deadline)).value
