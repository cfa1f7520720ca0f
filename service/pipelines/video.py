"""Video segmentation: chunks of frames through a semantic model, reusing keyframe features.

A model exported with the LRASPP video split (``parameters.video``, see models/video_split.py)
runs three engines, each behind its own dynamic batcher, so frames of one chunk and frames
of different streams share batches::

    every frame:   shallow(frame)           -> low
    keyframes:     deep(low)                -> deep   (kept in the stream's state)
    every frame:   fuse(low, deep of the last keyframe) -> labels

Keyframe decisions need only the shallow features, so they are made in frame order while
later frames are still in the shallow batcher, and a chunk's frames never wait for each
other except for the one deep run of their keyframe. Any other semantic model runs every
frame through its image batcher (every frame is a keyframe).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.codecs.geometry import Letterbox
from service.codecs.image import decode_image
from service.codecs.masks import encode_label_png, semantic_segments
from service.codecs.video import TooManyFrames, decode_video
from service.config import Settings
from service.engine import Engine, create_engine
from service.errors import BadParameter, ModelNotReady, UndecodableInput
from service.metrics import Metrics
from service.pipelines.base import OutputFormat, ServedModel
from service.pipelines.video_streams import KeyframePolicy, KeyframeState, KeyframeTracker, Stream, StreamRegistry
from service.repository import InputSpec, Task
from service.scheduler import BatchPolicy, DynamicBatcher

log = logging.getLogger(__name__)

SPLIT_PARTS = {  # part -> (input tensor names, output tensor name); models/video_split.py writes them
    "shallow": (("images",), "low"),
    "deep": (("low",), "deep"),
    "fuse": (("low", "deep"), "labels"),
}


# -- frames in ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedChunk:
    tensors: list[np.ndarray]  # (3, H, W) uint8 model inputs, in frame order
    indices: list[int]  # each frame's position in the chunk (before frame_stride)
    pts: list[float | None]  # presentation times, seconds (None for still images)
    box: Letterbox  # one geometry for the whole chunk


def prepare_video(data: bytes, spec: InputSpec, *, max_frames: int, frame_stride: int, max_pixels: int) -> PreparedChunk:
    """Decode a video chunk straight to letterboxed model inputs (blocking: codec pool)."""
    video = decode_video(
        data,
        max_frames=max_frames,
        frame_stride=frame_stride,
        max_pixels=max_pixels,
        scale_to=lambda h, w: Letterbox.fit(h, w, spec).min_decode_size(),
    )
    box = Letterbox.fit(video.height, video.width, spec)
    return PreparedChunk(
        [box.apply(f.rgb, spec.pad_value) for f in video.frames],
        [f.index for f in video.frames],
        [f.pts for f in video.frames],
        box,
    )


def prepare_images(
    images: list[bytes], spec: InputSpec, *, max_frames: int, frame_stride: int, max_pixels: int
) -> PreparedChunk:
    """Every ``frame_stride``-th of ordered still frames (JPEG/PNG/WebP) to letterboxed model
    inputs; all must be one size."""
    if not images:
        raise BadParameter("multipart body needs at least one file field 'frame'")
    indices = list(range(0, len(images), frame_stride))
    if len(indices) > max_frames:
        raise TooManyFrames(f"{len(indices)} frames (after frame_stride={frame_stride}); at most {max_frames} per chunk")
    tensors, box = [], None
    for index in indices:
        decoded = decode_image(images[index], max_pixels, lambda h, w: Letterbox.fit(h, w, spec).min_decode_size())
        frame_box = Letterbox.fit(decoded.height, decoded.width, spec)
        if box is not None and frame_box != box:
            raise UndecodableInput(f"frames differ in size ({box.src_w}x{box.src_h} vs {decoded.width}x{decoded.height})")
        box = frame_box
        tensors.append(box.apply(decoded.rgb, spec.pad_value))
    return PreparedChunk(tensors, indices, [None] * len(tensors), box)


# -- labels out --------------------------------------------------------------------------
def render_labels(labels: np.ndarray, box: Letterbox, fmt: OutputFormat, classes: list[str]) -> dict:
    """One frame's body fields at its original size (blocking: codec pool)."""
    full = box.restore(labels)
    if fmt == OutputFormat.png:
        return {"png": base64.b64encode(encode_label_png(full)).decode("ascii")}
    return {"segments": semantic_segments(full, classes)}


@dataclass(frozen=True)
class FrameResult:
    index: int
    pts: float | None
    keyframe: bool
    body: dict  # "segments" or "png"


# -- models ------------------------------------------------------------------------------
def _batch_runner(engine: Engine, inputs: tuple[str, ...], output: str):
    """Batches of same-shaped tuples of arrays (one per engine input) -> one output each."""

    def run(batch: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        feed = {name: np.stack([item[i] for item in batch]) for i, name in enumerate(inputs)}
        return list(engine.infer(feed)[output])

    return run


async def _in_order(work: Iterable[Awaitable], window: int) -> AsyncIterator:
    """Results of ``work`` in order, with at most ``window`` items in flight: enough to fill
    batches, few enough that one long chunk cannot fill a batcher's queue by itself."""
    pending: deque[asyncio.Future] = deque()
    try:
        for item in work:
            if len(pending) >= window:
                yield await pending.popleft()
            pending.append(asyncio.ensure_future(item))
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()


class _SplitRun:
    """One chunk through the split model. ``frame`` must be called in frame order: it chains
    each frame's keyframe decision after the previous frame's."""

    def __init__(self, parts: dict[str, DynamicBatcher], tracker: KeyframeTracker, deadline: float):
        self._parts = parts
        self._tracker = tracker
        self._deadline = deadline
        loop = asyncio.get_running_loop()
        self._deep = loop.create_future()  # deep features of the latest keyframe decided so far
        self._deep.set_result(tracker.deep)
        self._decided: asyncio.Future | None = None
        self._deep_tasks: list[asyncio.Task] = []

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
            self._deep = asyncio.ensure_future(self._deep_features(low))
            self._deep_tasks.append(self._deep)
        deep = self._deep
        decided.set_result(None)
        # shield: a cancelled frame must not cancel the deep run other frames share
        cached = await asyncio.shield(deep)
        labels = (await self._parts["fuse"].submit((low, cached), self._deadline)).value
        return keyframe, labels

    async def _deep_features(self, low: np.ndarray) -> np.ndarray:
        return (await self._parts["deep"].submit((low,), self._deadline)).value

    async def latest_deep(self) -> np.ndarray:
        return await self._deep

    def cancel(self) -> None:
        for task in self._deep_tasks:
            task.cancel()


class VideoModel:
    """A served semantic model as the video route sees it: its split engines when it has
    them, else its image batcher."""

    def __init__(self, served: ServedModel, parts: dict[str, list[Engine]] | None, metrics: Metrics):
        self.served = served
        self.config = served.entry.config
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

    async def start(self, warmup: bool) -> None:
        if warmup and self.split:
            loop = asyncio.get_running_loop()
            spec = self.config.input
            for shallow, deep, fuse in zip(self._engines["shallow"], self._engines["deep"], self._engines["fuse"]):
                for n in sorted({1, self.config.max_batch_size}):  # first runs allocate arenas / build kernels
                    images = np.zeros((n, 3, spec.height, spec.width), np.uint8)
                    low = (await loop.run_in_executor(None, shallow.infer, {"images": images}))["low"]
                    cached = (await loop.run_in_executor(None, deep.infer, {"low": low}))["deep"]
                    await loop.run_in_executor(None, fuse.infer, {"low": low, "deep": cached})
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
            async for labels in _in_order((self._whole_frame(t, deadline) for t in chunk.tensors), self._window):
                yield True, labels
            return
        run = _SplitRun(self._parts, tracker, deadline)
        try:
            async for result in _in_order((run.frame(t) for t in chunk.tensors), self._window):
                yield result
            tracker.deep = np.array(await run.latest_deep())  # a copy: not a view into a whole batch
        finally:
            run.cancel()

    async def _whole_frame(self, tensor: np.ndarray, deadline: float) -> np.ndarray:
        return (await self.served.batcher.submit(tensor, deadline)).value


# -- chunks and streams ------------------------------------------------------------------
class VideoMetrics:
    """Stream and frame counts; also the stream registry's observer."""

    def __init__(self, registry: CollectorRegistry):
        self.streams = Gauge("segserve_video_streams", "Video streams whose keyframe state the server keeps", registry=registry)
        self.evictions = Counter(
            "segserve_video_stream_evictions", "Video streams dropped, by reason (idle, capacity, shutdown)", ["reason"], registry=registry
        )
        self.frames = Counter("segserve_video_frames", "Video frames segmented, by model and keyframe", ["model", "keyframe"], registry=registry)

    def live(self, count: int) -> None:
        self.streams.set(count)

    def evicted(self, reason: str) -> None:
        self.evictions.labels(reason).inc()


_DONE = object()


class ChunkRun:
    """One chunk in flight, as a task of its own that holds its stream until the frames are
    done, failed or cancelled, whether or not anyone reads them: a client that goes away, or
    a response that never starts, cannot leave a stream locked. The stream keeps the chunk's
    keyframe state only if every frame succeeded, so a failed chunk can be sent again."""

    def __init__(
        self,
        model: VideoModel,
        chunk: PreparedChunk,
        tracker: KeyframeTracker,
        fmt: OutputFormat,
        deadline: float,
        service: "VideoService",
        stream: Stream | None,
        sequence: int | None,
    ):
        self._model, self._chunk, self._tracker = model, chunk, tracker
        self._fmt, self._deadline, self._service = fmt, deadline, service
        self._stream, self._sequence = stream, sequence
        self._results: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name=f"video-chunk-{model.config.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        chunk, classes = self._chunk, self._model.config.classes
        frames = self._service.metrics.frames
        completed = False
        try:
            position = 0
            async for keyframe, labels in self._model.frames(chunk, self._tracker, self._deadline):
                body = loop.run_in_executor(self._service.pool, render_labels, labels, chunk.box, self._fmt, classes)
                self._results.put_nowait((chunk.indices[position], chunk.pts[position], keyframe, body))
                frames.labels(self._model.config.name, str(keyframe).lower()).inc()
                position += 1
            completed = True
        except asyncio.CancelledError:
            self._results.put_nowait(ModelNotReady("the video chunk was cancelled"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to whoever reads the results
            self._results.put_nowait(exc)
        finally:
            if self._stream is not None:
                self._service.streams.release(self._stream, self._tracker.state() if completed else None, self._sequence)
            self._results.put_nowait(_DONE)

    async def results(self) -> AsyncIterator[FrameResult]:
        """Finished frames in order, as they complete; raises the chunk's error, if any."""
        while (item := await self._results.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            index, pts, keyframe, body = item
            yield FrameResult(index, pts, keyframe, await body)

    async def collect(self) -> list[FrameResult]:
        return [frame async for frame in self.results()]

    def cancel(self) -> None:
        self.task.cancel()


class VideoService:
    """Video for every ready semantic model, and the streams of all of them."""

    def __init__(self, settings: Settings, models: dict, metrics: Metrics, pool: Executor):
        self.settings = settings
        self.pool = pool
        self.metrics = VideoMetrics(metrics.registry)
        self.streams = StreamRegistry(settings.video_max_streams, settings.video_stream_idle_s, self.metrics)
        self._statuses = models  # ModelManager.models: name -> ModelStatus
        self._app_metrics = metrics
        self._models: dict[str, VideoModel] = {}
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        for name, status in self._statuses.items():
            if status.state != "READY" or status.entry.config.task != Task.semantic:
                continue
            self._models[name] = model = await self._start_model(status.served)
            log.info("model %s: video %s", name, "with keyframe feature reuse" if model.split else "frame by frame (no video split)")
        self._sweeper = asyncio.create_task(self._sweep_idle_streams(), name="video-stream-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.streams.clear()
        await asyncio.gather(*(m.stop(self.settings.shutdown_drain_s) for m in self._models.values()), return_exceptions=True)

    async def _start_model(self, served: ServedModel) -> VideoModel:
        """The model with its video split, or frame by frame when it has none or the split
        fails to load: a broken split must not take the model's video, or the server, down."""
        entry = served.entry
        video = entry.config.parameters.get("video")
        if video:
            root = entry.version_dir / video.get("dir", "video")
            try:
                # The parts are ONNX graphs only (no architecture for the torch backend to rebuild).
                parts = await asyncio.to_thread(
                    lambda: {
                        part: [create_engine(entry.config, root / part, backend="onnxruntime") for _ in range(entry.config.instances)]
                        for part in SPLIT_PARTS
                    }
                )
                model = VideoModel(served, parts, self._app_metrics)
                await model.start(self.settings.warmup)
                return model
            except Exception:  # noqa: BLE001 - logged; the model still serves video frame by frame
                log.exception("model %s: video split unavailable, video runs frame by frame", entry.config.name)
        model = VideoModel(served, None, self._app_metrics)
        await model.start(self.settings.warmup)
        return model

    async def _sweep_idle_streams(self) -> None:
        period = min(self.settings.video_stream_idle_s / 2, 10.0)
        while True:
            await asyncio.sleep(period)
            self.streams.evict_idle()

    def model(self, name: str, task: str) -> VideoModel:
        model = self._models.get(name)
        if model is None:
            raise BadParameter(f"model {name} is an {task} model; /segment/video serves semantic models only (for now)")
        return model

    async def start_chunk(
        self,
        model: VideoModel,
        chunk: PreparedChunk,
        policy: KeyframePolicy,
        fmt: OutputFormat,
        deadline: float,
        stream_id: str | None,
        sequence: int | None,
    ) -> tuple[ChunkRun, bool]:
        """The chunk running on its stream (waiting for an earlier chunk of it first), and
        whether the stream is new. Without a ``stream_id`` the chunk is a stream of its own."""
        stream = None if stream_id is None else await self.streams.acquire((model.config.name, stream_id), sequence)
        new = stream is None or stream.new
        tracker = KeyframeTracker(policy, stream.state if stream else KeyframeState(), chunk.box)
        return ChunkRun(model, chunk, tracker, fmt, deadline, self, stream, sequence), new
