"""Video segmentation: chunks of frames through a model, with per-stream state.

Layers: ``chunks`` decodes a chunk to model inputs (the model's pipeline maps each frame);
a ``VideoModel`` runs its frames (``semantic``: keyframe feature reuse; ``instance``: every
frame through the detector's batcher); ``ChunkRun`` here encodes each frame and holds the
stream while the chunk runs; ``VideoStreams`` owns the stream registry of every model.
Each pipeline builds, starts and stops its own ``VideoModel`` (``Pipeline.video``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from segserve.config import Settings
from segserve.errors import ModelNotReady
from segserve.pipelines.base import OutputFormat, PartStatus, Pipeline, Placement
from segserve.pipelines.video.chunks import PreparedChunk
from segserve.pipelines.video.streams import (
    KeyframePolicy,
    KeyframeState,
    KeyframeTracker,
    Stream,
    StreamRegistry,
)
from segserve.scheduler import Clock

log = logging.getLogger(__name__)


class VideoModel(Protocol):
    """What the video route needs of a model, whatever its task."""

    pipeline: Pipeline
    split: bool  # keyframe feature reuse
    default_policy: KeyframePolicy
    window: int  # frames of one chunk in the batchers at once

    def policy(self, interval: int | None, threshold: float | None) -> KeyframePolicy: ...

    def parts(self) -> list[PartStatus]: ...

    async def stop(self) -> None: ...

    def frames(self, chunk: PreparedChunk, tracker: KeyframeTracker, deadline: float) -> AsyncIterator[tuple[bool, Any]]:
        """(keyframe, raw output) per frame, in order; afterwards ``tracker`` holds the
        state the stream continues from."""
        ...


def encode_frame(model: VideoModel, raw: Any, chunk: PreparedChunk, position: int, fmt: OutputFormat, options: Any) -> dict:
    """A frame's body fields at its original size; PNGs and overlay JPEGs as base64 (blocking:
    codec pool)."""
    pipeline = model.pipeline
    placement = Placement(chunk.height, chunk.width, chunk.geometry)
    if fmt == OutputFormat.overlay:
        jpeg = pipeline.overlay_jpeg(chunk.frames[position], raw, placement, options)
        return {"overlay": base64.b64encode(jpeg).decode("ascii")}
    encoded = pipeline.encode(raw, placement, options, fmt)
    return encoded.body if encoded.png is None else {"png": base64.b64encode(encoded.png).decode("ascii")}


@dataclass(frozen=True)
class FrameResult:
    index: int
    pts: float | None
    keyframe: bool
    body: dict  # "segments" (semantic), "instances" (instance and keypoints), "png" or "overlay"


# -- chunks and streams ------------------------------------------------------------------
class VideoMetrics:
    """Stream and frame counts; also the stream registry's observer."""

    def __init__(self, registry: CollectorRegistry):
        self.streams = Gauge("segserve_video_streams", "Video streams whose keyframe state the server keeps", registry=registry,
                             multiprocess_mode="livesum")
        self.evictions = Counter(
            "segserve_video_stream_evictions", "Video streams dropped, by reason (idle, capacity, shutdown)", ["reason"], registry=registry
        )
        self.restarts = Counter(
            "segserve_video_stream_restarts", "Chunks past a stream's first that found no state for it (a fresh keyframe)", registry=registry
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
        service: "VideoStreams",
        stream: Stream | None,
        sequence: int | None,
    ):
        self._model, self._chunk, self._tracker = model, chunk, tracker
        self._fmt, self._options, self._deadline, self._service = fmt, options, deadline, service
        self._stream, self._sequence = stream, sequence
        self._results: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name=f"video-chunk-{model.pipeline.config.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        chunk, model = self._chunk, self._model
        frames = self._service.metrics.frames
        completed = False
        try:
            position = 0
            async for keyframe, raw in model.frames(chunk, self._tracker, self._deadline):
                body = loop.run_in_executor(self._service.pool, encode_frame, model, raw, chunk, position, self._fmt, self._options)
                self._results.put_nowait((chunk.indices[position], chunk.pts[position], keyframe, body))
                frames.labels(model.pipeline.config.name, str(keyframe).lower()).inc()
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


class VideoStreams:
    """The streams of every model's video: their keyframe state between chunks, and the
    chunks running on them."""

    def __init__(self, settings: Settings, registry: CollectorRegistry, pool: Executor, clock: Clock | None = None):
        self.settings = settings
        self.pool = pool
        self.metrics = VideoMetrics(registry)
        self.streams = StreamRegistry(settings.video_max_streams, settings.video_stream_idle_s, self.metrics, clock)
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_idle_streams(), name="video-stream-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.streams.clear()

    async def _sweep_idle_streams(self) -> None:
        period = min(self.settings.video_stream_idle_s / 2, 10.0)
        while True:
            await asyncio.sleep(period)
            self.streams.evict_idle()

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
    ) -> tuple[ChunkRun, bool, bool]:
        """The chunk running on its stream (waiting for an earlier chunk of it first), whether
        the stream is new here, and whether it was restarted: a chunk past the first (sequence
        > 0) of a stream this server holds no state for -- evicted, idle, or sent to another
        replica -- starts afresh with a keyframe, and says so instead of losing state silently.
        Without a ``stream_id`` the chunk is a stream of its own."""
        stream = None if stream_id is None else await self.streams.acquire((model.pipeline.config.name, stream_id), sequence)
        new = stream is None or stream.new
        restarted = stream is not None and stream.new and bool(sequence)
        if restarted:
            self.metrics.restarts.inc()
        tracker = KeyframeTracker(policy, stream.state if stream else KeyframeState(), chunk.geometry)
        return ChunkRun(model, chunk, tracker, fmt, options, deadline, self, stream, sequence), new, restarted
