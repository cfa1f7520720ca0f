"""Video segmentation: chunks of frames through a model, with per-stream state.

Layers: ``video_chunks`` decodes a chunk to model inputs; a ``VideoModel`` runs its frames
(``video_semantic``: keyframe feature reuse; ``video_instance``: every frame through the
detector's batcher); ``ChunkRun`` here renders each frame and holds the stream while the
chunk runs; ``VideoService`` owns the video models and the stream registry.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from segserve.config import Settings
from segserve.engine import create_engine
from segserve.errors import ModelNotReady
from segserve.metrics import Metrics
from segserve.pipelines.base import OutputFormat, ServedModel
from segserve.pipelines.video_chunks import FrameMapper, PreparedChunk
from segserve.pipelines.video_semantic import SemanticVideoModel, split_parts
from segserve.pipelines.video_instance import InstanceVideoModel
from segserve.pipelines.video_streams import KeyframePolicy, KeyframeState, KeyframeTracker, Stream, StreamRegistry
from segserve.contract.model_config import ModelConfig, Task

log = logging.getLogger(__name__)


class VideoModel(Protocol):
    """What the video route needs of a model, whatever its task."""

    config: ModelConfig
    mapper: FrameMapper
    split: bool  # keyframe feature reuse
    default_policy: KeyframePolicy

    def policy(self, interval: int | None, threshold: float | None) -> KeyframePolicy: ...

    def parse_options(self, query: dict[str, str]) -> Any: ...

    async def start(self, warmup: bool) -> None: ...

    async def stop(self, drain_timeout_s: float) -> None: ...

    def frames(self, chunk: PreparedChunk, tracker: KeyframeTracker, deadline: float) -> AsyncIterator[tuple[bool, Any]]:
        """(keyframe, raw result) per frame, in order; afterwards ``tracker`` holds the
        state the stream continues from."""
        ...

    def render(self, raw: Any, chunk: PreparedChunk, fmt: OutputFormat, options: Any) -> dict:
        """A frame's body fields at its original size (blocking: codec pool)."""
        ...


@dataclass(frozen=True)
class FrameResult:
    index: int
    pts: float | None
    keyframe: bool
    body: dict  # "segments" (semantic), "instances" (instance) or "png"


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
        options: Any,
        deadline: float,
        service: "VideoService",
        stream: Stream | None,
        sequence: int | None,
    ):
        self._model, self._chunk, self._tracker = model, chunk, tracker
        self._fmt, self._options, self._deadline, self._service = fmt, options, deadline, service
        self._stream, self._sequence = stream, sequence
        self._results: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name=f"video-chunk-{model.config.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        chunk, model = self._chunk, self._model
        frames = self._service.metrics.frames
        completed = False
        try:
            position = 0
            async for keyframe, raw in model.frames(chunk, self._tracker, self._deadline):
                body = loop.run_in_executor(self._service.pool, model.render, raw, chunk, self._fmt, self._options)
                self._results.put_nowait((chunk.indices[position], chunk.pts[position], keyframe, body))
                frames.labels(model.config.name, str(keyframe).lower()).inc()
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
    """Video for every ready model, and the streams of all of them."""

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
            if status.state != "READY":
                continue
            if status.entry.config.task == Task.instance:
                self._models[name] = model = InstanceVideoModel(status.served)
            else:
                self._models[name] = model = await self._start_semantic(status.served)
            log.info("model %s: video %s", name, "with keyframe feature reuse" if model.split else "frame by frame")
        self._sweeper = asyncio.create_task(self._sweep_idle_streams(), name="video-stream-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.streams.clear()
        await asyncio.gather(*(m.stop(self.settings.shutdown_drain_s) for m in self._models.values()), return_exceptions=True)

    async def _start_semantic(self, served: ServedModel) -> SemanticVideoModel:
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
                        for part in split_parts(video)
                    }
                )
                model = SemanticVideoModel(served, parts, self._app_metrics)
                await model.start(self.settings.warmup)
                return model
            except Exception:  # noqa: BLE001 - logged; the model still serves video frame by frame
                log.exception("model %s: video split unavailable, video runs frame by frame", entry.config.name)
        model = SemanticVideoModel(served, None, self._app_metrics)
        await model.start(self.settings.warmup)
        return model

    async def _sweep_idle_streams(self) -> None:
        period = min(self.settings.video_stream_idle_s / 2, 10.0)
        while True:
            await asyncio.sleep(period)
            self.streams.evict_idle()

    def model(self, name: str) -> VideoModel:
        model = self._models.get(name)
        if model is None:  # became ready after the video service started
            raise ModelNotReady(f"model {name} is not ready for video yet")
        return model

    async def start_chunk(
        self,
        model: VideoModel,
        chunk: PreparedChunk,
        policy: KeyframePolicy,
        fmt: OutputFormat,
        options: Any,
        deadline: float,
        stream_id: str | None,
        sequence: int | None,
    ) -> tuple[ChunkRun, bool]:
        """The chunk running on its stream (waiting for an earlier chunk of it first), and
        whether the stream is new. Without a ``stream_id`` the chunk is a stream of its own."""
        stream = None if stream_id is None else await self.streams.acquire((model.config.name, stream_id), sequence)
        new = stream is None or stream.new
        tracker = KeyframeTracker(policy, stream.state if stream else KeyframeState(), chunk.geometry)
        return ChunkRun(model, chunk, tracker, fmt, options, deadline, self, stream, sequence), new
