"""Video for the client: frames read from a file, a folder of frames or a camera/URL (PyAV),
sent as consecutive chunks of one stream (``stream_id`` + ``sequence`` 0, 1, 2, ...), so the
server carries its keyframe state from chunk to chunk; each frame comes back as a ``VideoFrame``.

Each chunk goes as multipart ``frame`` parts (JPEG), which needs no video encoder here and lets a
chunk hold any number of frames. Its answer is read as NDJSON (the chunk's head, one line per
frame as the server finishes it, then the summary), so each frame is yielded as soon as it is
done rather than when its whole chunk is. A stream survives what a long video meets on the way:

- 503 or a lost connection, before or during the answer: the chunk is sent again under the same
  sequence (the server does not count a chunk that failed), and the frames already yielded are
  not yielded again.
- 409 ``sequence_conflict``: the server already completed this chunk (its answer was lost) or
  expects another one; it says which (``expects sequence N``) and the chunk is sent as N.
- ``stream_restarted``: the server had lost the stream's state (idle, evicted, another replica)
  and started it afresh with a keyframe; nothing to resend, and it is counted (``StreamStats``).
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping

import numpy as np
from PIL import Image

from segserve.client.calls import CONNECTION_LOST, Call, deadline_of
from segserve.client.errors import SegserveError
from segserve.client.retry import RETRIED_STATUSES, RetryPolicy
from segserve.client.images import IMAGE_SUFFIXES, pixels
from segserve.client.result import Result

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
JPEG_QUALITY = 95
EXPECTED_SEQUENCE = re.compile(r"expects sequence (\d+)")
NDJSON = "application/x-ndjson"
# Fields of a chunk's answer that every frame's Result carries.
SHARED_FIELDS = ("model", "task", "width", "height", "classes", "keypoint_names", "skeleton")


@dataclass(frozen=True)
class SourceFrame:
    rgb: np.ndarray
    pts: float | None


def read_frames(source: str | os.PathLike) -> Iterator[SourceFrame]:
    """A folder's images in name order, or a video file / camera / URL's frames as PyAV decodes them."""
    path = Path(source)
    if path.is_dir():
        for file in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            yield SourceFrame(pixels(file), None)
        return
    import av  # only here: reading images needs no FFmpeg

    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield SourceFrame(frame.to_ndarray(format="rgb24"), None if frame.time is None else float(frame.time))


def chunks(frames: Iterator[SourceFrame], size: int) -> Iterator[list[SourceFrame]]:
    chunk: list[SourceFrame] = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


@dataclass
class StreamStats:
    stream_id: str
    chunks: int = 0
    frames: int = 0
    keyframes: int = 0
    restarts: int = 0  # chunks the server answered with stream_restarted (its state was lost)
    conflicts: int = 0  # 409s recovered from


class VideoFrame(Result):
    """One frame of a stream: a ``Result`` (masks, label_map, overlay()) plus where it is."""

    def __init__(self, body: dict, index: int, pts: float | None, keyframe: bool, sequence: int, rgb: np.ndarray):
        super().__init__(body, 0.0, rgb)
        self.index, self.pts, self.keyframe, self.sequence = index, pts, keyframe, sequence

    def __repr__(self) -> str:
        return f"<VideoFrame {self.index} (chunk {self.sequence}){' keyframe' if self.keyframe else ''} {self.model}>"


@dataclass
class VideoStream:
    """One stream's bookkeeping: the next chunk's sequence, and how its answers map to frames."""

    model: str | None
    options: Mapping[str, Any]
    chunk_frames: int
    timeout_ms: int | None
    stream_id: str = field(default_factory=lambda: f"segserve-client-{uuid.uuid4().hex[:16]}")
    sequence: int = 0
    next_index: int = 0
    stats: StreamStats = field(init=False)

    def __post_init__(self):
        if self.chunk_frames < 1:
            raise ValueError("chunk_frames must be at least 1")
        self.stats = StreamStats(self.stream_id)

    def call(self, chunk: list[SourceFrame]) -> Call:
        files = [("frame", (f"{self.next_index + i:08d}.jpg", jpeg(f.rgb), "image/jpeg")) for i, f in enumerate(chunk)]
        params = {"model": self.model, **self.options, "stream_id": self.stream_id, "sequence": self.sequence}
        return Call("POST", "/segment/video", params, {"Accept": NDJSON}, files=files, deadline=deadline_of(self.timeout_ms))

    def answer(self, chunk: list[SourceFrame], skip: int) -> "ChunkAnswer":
        return ChunkAnswer(self, chunk, skip)

    def recover(self, error: SegserveError, call: Call, retry: RetryPolicy, attempt: int) -> float | None:
        """Seconds to wait before sending the chunk again after ``error``, or None: not ours to fix.
        A 409: at once, under the sequence the server expects. An answer cut short (a lost
        connection, or a 503 after its 200 went out): as ``retry`` says."""
        if error.status == 409 and error.code == "sequence_conflict":
            expected = EXPECTED_SEQUENCE.search(error.message)
            if expected is None or int(expected.group(1)) == self.sequence:
                return None
            self.sequence = call.params["sequence"] = int(expected.group(1))
            self.stats.conflicts += 1
            return 0.0
        if error.code == CONNECTION_LOST or (error.midway and error.status in RETRIED_STATUSES):
            return retry.wait_s(attempt, call.deadline)
        return None

    def frame(self, head: dict, frame: dict, chunk: list[SourceFrame]) -> VideoFrame:
        """One frame's line -> its VideoFrame, numbered from the stream's start."""
        shared = {k: head[k] for k in SHARED_FIELDS if k in head}
        fields = {k: v for k, v in frame.items() if k in ("segments", "instances")}
        source = chunk[frame["index"]]
        return VideoFrame({**shared, **fields}, self.next_index + frame["index"], source.pts, frame["keyframe"],
                          self.sequence, source.rgb)

    def finish(self, answer: "ChunkAnswer", chunk: list[SourceFrame]) -> None:
        """The chunk is done: count it, and move on to the next sequence."""
        summary = answer.summary
        if summary is None:
            raise SegserveError(None, CONNECTION_LOST, f"stream {self.stream_id}: the chunk's answer ended before its summary",
                                midway=True)
        stats = self.stats
        stats.chunks += 1
        stats.frames += answer.frames
        stats.keyframes += summary.get("keyframes", 0)
        stats.restarts += bool(summary.get("stream_restarted"))
        self.sequence += 1
        self.next_index += len(chunk)

    def unsettled(self) -> SegserveError:
        return SegserveError(409, "sequence_conflict", f"stream {self.stream_id}: still in conflict after every retry")


class ChunkAnswer:
    """One chunk's NDJSON answer, read line by line: its head, its frames (past the first ``skip``:
    those an earlier, failed try already gave), then its summary."""

    def __init__(self, video: VideoStream, chunk: list[SourceFrame], skip: int):
        self._video, self._chunk, self._skip = video, chunk, skip
        self._head: dict | None = None
        self.frames = 0  # frames read, the skipped ones included
        self.summary: dict | None = None

    def read(self, line: bytes | str) -> VideoFrame | None:
        """The frame on this line, if it is a frame to yield; raises the server's error line."""
        item = json.loads(line)
        if "error" in item:
            error = item["error"]
            raise SegserveError(error.get("status"), error["code"], error["message"], midway=True)
        if self._head is None:
            self._head = item
            return None
        if "index" not in item:
            self.summary = item
            return None
        self.frames += 1
        return None if self.frames <= self._skip else self._video.frame(self._head, item, self._chunk)


def open_stream(model: str | None, chunk_frames: int, keyframe_interval: int | None, keyframe_threshold: float | None,
                timeout_ms: int | None, stream_id: str | None, options: Mapping[str, Any]) -> VideoStream:
    options = {"keyframe_interval": keyframe_interval, "keyframe_threshold": keyframe_threshold, **options}
    video = VideoStream(model, options, chunk_frames, timeout_ms)
    if stream_id is not None:
        video.stream_id = video.stats.stream_id = stream_id
    return video


class FrameStream:
    """``for frame in client.stream(...)``; ``.stats`` counts chunks, keyframes, restarts, conflicts."""

    def __init__(self, frames: Iterator[VideoFrame], stats: StreamStats):
        self._frames, self.stats = frames, stats

    def __iter__(self) -> Iterator[VideoFrame]:
        return self._frames


class AsyncFrameStream:
    """``async for frame in client.stream(...)``; ``.stats`` as for FrameStream."""

    def __init__(self, frames: AsyncIterator[VideoFrame], stats: StreamStats):
        self._frames, self.stats = frames, stats

    def __aiter__(self) -> AsyncIterator[VideoFrame]:
        return self._frames
