"""Semantic models on video: keyframe feature reuse through the video split (LRASPP or DeepLabV3).

A model exported with the video split (``parameters.video``, see models/video_split.py)
runs three engines, each behind its own dynamic batcher, so frames of one chunk and frames
of different streams share batches::

    every frame:   shallow(frame)           -> low
    keyframes:     deep(low)                -> deep   (kept with low in the stream's state)
    keyframes:     fuse(low, deep)          -> labels (= the full model's)
    other frames:  correct(low, deep and low of the last keyframe) -> labels
                   (a trained correction of the stale deep features; a model without one
                   runs fuse(low, deep of the last keyframe) instead)

Which of these tensors a part takes depends on the kind of split (``VideoSplit.tensors``):
DeepLabV3's fuse takes ``deep`` alone (its head has no low-level branch), so its frames
between keyframes repeat the keyframe's head output unless it has a correction.

Keyframe decisions need only the shallow features, so they are made in frame order while
later frames are still in the shallow batcher, and a chunk's frames never wait for each
other except for the one deep run of their keyframe. Any other semantic model runs every
frame through its image batcher (every frame is a keyframe).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable

import numpy as np

from segserve.contract.model_config import ModelConfig
from segserve.contract.video import VideoSplit
from segserve.engine import Engine, EngineInfo
from segserve.pipelines.base import (
    ModelState,
    PartStatus,
    batch_policy,
    load_engines,
    stacked,
    warm_up,
)
from segserve.pipelines.video.chunks import PreparedChunk, in_order
from segserve.pipelines.video.streams import KeyframePolicy, KeyframeTracker
from segserve.scheduler import Batcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyFeatures:
    """What a keyframe leaves for the frames after it."""

    low: np.ndarray
    deep: np.ndarray

    def copy(self) -> "KeyFeatures":  # batch outputs are views into the whole batch's array
        return KeyFeatures(np.array(self.low), np.array(self.deep))


def _batch_runner(engine: Engine, inputs: tuple[str, ...], output: str):
    """Batches of same-shaped tuples of arrays (one per engine input) -> one output each."""

    def run(batch: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        feed = {name: stacked([item[i] for item in batch]) for i, name in enumerate(inputs)}
        return list(engine.infer(feed)[output])

    return run


class _SplitRun:
    """One chunk through the split model. ``frame`` must be called in frame order: it chains
    each frame's keyframe decision after the previous frame's."""

    def __init__(self, parts: dict[str, Batcher], split: VideoSplit, tracker: KeyframeTracker, deadline: float):
        self._parts = parts
        self._inputs = {part: split.tensors(part)[0] for part in parts}
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
        part = "fuse" if keyframe or "correct" not in self._parts else "correct"
        tensors = {"low": low, "deep": key.deep, "key_low": key.low}
        labels = (await self._parts[part].submit(tuple(tensors[n] for n in self._inputs[part]), self._deadline)).value
        return keyframe, labels

    async def _key_features(self, low: np.ndarray) -> KeyFeatures:
        return KeyFeatures(low, (await self._parts["deep"].submit((low,), self._deadline)).value)

    async def latest_key(self) -> KeyFeatures:
        return await self._key

    def cancel(self) -> None:
        for task in self._key_tasks:
            task.cancel()


def load_split(config: ModelConfig, version_dir, split: VideoSplit) -> dict[str, list[Engine]]:
    """Each part's engines (blocking: run in a thread). The parts are ONNX graphs only: there is
    no architecture for the torch backend to rebuild them from."""
    root = version_dir / split.dir
    return {part: load_engines(config, root / part, "onnxruntime") for part in split.parts()}


class SemanticVideoModel:
    """A semantic model as the video route sees it: its split parts, each behind its own
    batcher, when it has them; else its image batcher, frame by frame. A split that fails to
    load leaves the model serving video frame by frame, and says so in /v1/models."""

    def __init__(self, pipeline, split: VideoSplit | None):
        self.pipeline = pipeline  # segserve.pipelines.semantic.SemanticModel, started
        self.config = pipeline.config
        self._split = split
        self._engines: dict[str, list[Engine]] = {}
        self._parts: dict[str, Batcher] = {}
        self._failure: str | None = None
        self.window = 2 * self.config.max_batch_size  # frames of a chunk in flight at once
        self._use_split(False)

    def _use_split(self, split: bool) -> None:
        self.split = split
        if split:
            self.default_max_interval = self._split.max_keyframe_interval
            self.default_policy = KeyframePolicy(self.default_max_interval, self._split.keyframe_threshold)
        else:
            self.default_max_interval = 1
            self.default_policy = KeyframePolicy(1)

    async def start(self) -> None:
        if self._split is None:
            return
        config = self.config
        names = {f"{config.name}/{part}": part for part in self._split.parts()}
        try:
            opened = await self.pipeline.context.batchers.open(list(names), batch_policy(config), self._load)
        except Exception as exc:  # noqa: BLE001 - logged and shown; the model still serves video frame by frame
            log.exception("model %s: video split unavailable, video runs frame by frame", config.name)
            self._failure = f"{type(exc).__name__}: {exc}"
            self._close_engines()
            return
        self._parts = {names[name]: batcher for name, batcher in opened.items()}
        self._use_split(True)
        log.info("model %s: video with keyframe feature reuse (%s)", config.name, ", ".join(self._parts))

    async def _load(self) -> dict[str, tuple[list, EngineInfo, int | None]]:
        """Every part's engines (in a thread), warmed up: each part's batcher's runners. A measured
        batch size (preferred_batch_size: auto) is the keyframe chain's, one for every part."""
        config = self.config
        self._engines = await asyncio.to_thread(load_split, config, self.pipeline.entry.version_dir, self._split)
        batch_size = None
        if self.pipeline.context.warmup:
            batch_size = await warm_up(f"{config.name}/video", config, self._keyframe_run, config.instances)
        return {f"{config.name}/{part}": ([_batch_runner(e, *self._split.tensors(part)) for e in engines], engines[0].info, batch_size)
                for part, engines in self._engines.items()}

    def _keyframe_run(self, instance: int, n: int) -> None:
        """Every part of one instance once, on a batch of ``n`` blank frames (warm-up)."""
        spec = self.config.input
        tensors = {"images": np.zeros((n, 3, spec.height, spec.width), np.uint8)}
        for part, engines in self._engines.items():  # in the order a keyframe runs them
            inputs, output = self._split.tensors(part)
            tensors[output] = engines[instance].infer({name: tensors[name] for name in inputs})[output]
            tensors["key_low"] = tensors.get("low")  # the keyframe's own shallow features

    def parts(self) -> list[PartStatus]:
        if self._split is None:
            return []
        if self._failure is not None:
            return [PartStatus(f"video/{part}", ModelState.unavailable, self._failure) for part in self._split.parts()]
        return [PartStatus(f"video/{part}", ModelState.ready, engine=batcher.info) for part, batcher in self._parts.items()]

    def policy(self, interval: int | None, threshold: float | None) -> KeyframePolicy:
        """The request's keyframe policy: a fixed interval, a threshold (adaptive, with the
        interval or the model's default as the longest gap), or the model's default."""
        if interval is None and threshold is None:
            return self.default_policy
        return KeyframePolicy(interval or self.default_max_interval, threshold)

    async def stop(self) -> None:
        drain = self.pipeline.context.drain_timeout_s
        await asyncio.gather(*(b.stop(drain) for b in self._parts.values()))
        self._close_engines()

    def _close_engines(self) -> None:
        for engines in self._engines.values():
            for engine in engines:
                engine.close()

    async def frames(self, chunk: PreparedChunk, tracker: KeyframeTracker, deadline: float) -> AsyncIterator[tuple[bool, np.ndarray]]:
        """(keyframe, labels at model input size) per frame, in order. When it is exhausted,
        ``tracker`` holds the state the stream continues from."""
        if not self.split:
            async for labels in in_order((self._whole_frame(t, deadline) for t in chunk.inputs), self.window):
                yield True, labels
            return
        run = _SplitRun(self._parts, self._split, tracker, deadline)
        try:
            async for result in in_order((run.frame(t) for t in chunk.inputs), self.window):
                yield result
            tracker.keyframe_cache = (await run.latest_key()).copy()
        finally:
            run.cancel()

    async def _whole_frame(self, tensor: np.ndarray, deadline: float) -> np.ndarray:
        return (await self.pipeline.batcher.submit(tensor, deadline)).value
