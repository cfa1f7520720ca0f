"""Video chunk decoding (PyAV, from memory) with the limits that keep a server alive.

Frames are scaled by the decoder's own scaler straight to the size the model needs, so a
chunk of 1080p frames never sits in memory at full resolution; the pixel and frame limits
are checked before any pixel is decoded or kept.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from segserve.errors import TooManyPixels, UndecodableInput

VIDEO_TYPES = frozenset({"video/mp4", "video/webm", "video/x-matroska"})


class TooManyFrames(UndecodableInput):
    """The chunk holds more frames than the request or the server allows."""

    code = "too_many_frames"


@dataclass(frozen=True)
class VideoFrame:
    rgb: np.ndarray  # (h, w, 3) uint8 at the size ``scale_to`` asked for
    index: int  # position among the chunk's decoded frames (before frame_stride)
    pts: float | None  # presentation time, seconds


@dataclass(frozen=True)
class DecodedVideo:
    frames: list[VideoFrame]
    width: int  # original frame size, the geometry masks are returned in
    height: int


ScaleTo = Callable[[int, int], tuple[int, int]]  # original (h, w) -> decoded (h, w)


def decode_video(data: bytes, *, max_frames: int, frame_stride: int, max_pixels: int, scale_to: ScaleTo) -> DecodedVideo:
    """Every ``frame_stride``-th frame of the first video stream, at most ``max_frames`` of
    them (more is TooManyFrames, not a silent cut). Corrupt data, and an MP4 cut short (its
    index is gone), is UndecodableInput; a WebM/Matroska chunk cut between clusters is a
    shorter chunk, as for any live stream of those formats."""
    if not data:
        raise UndecodableInput("empty body: expected a video chunk")
    try:
        # metadata is never used: a tag that is not UTF-8 (e.g. a Latin-1 title) must not make the chunk undecodable
        with av.open(io.BytesIO(data), mode="r", metadata_errors="replace") as container:
            if not container.streams.video:
                raise UndecodableInput("the container has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames: list[VideoFrame] = []
            width = height = 0
            # one scaler for the chunk: frame.to_ndarray(width=...) would build a new one per frame
            # (a third of a small frame's decode cost; the same pixels)
            scaler = VideoReformatter()
            for index, frame in enumerate(container.decode(stream)):
                if not width:
                    width, height = frame.width, frame.height
                    if width * height > max_pixels:
                        raise TooManyPixels(f"frames are {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
                    out_h, out_w = scale_to(height, width)
                elif (frame.width, frame.height) != (width, height):
                    raise UndecodableInput(f"frame size changes within the chunk ({width}x{height} -> {frame.width}x{frame.height})")
                if index % frame_stride:
                    continue
                if len(frames) == max_frames:
                    raise TooManyFrames(f"the chunk has more than {max_frames} frames (after frame_stride={frame_stride})")
                rgb = scaler.reformat(frame, format="rgb24", width=out_w, height=out_h, interpolation="BILINEAR").to_ndarray()
                frames.append(VideoFrame(rgb, index, None if frame.time is None else float(frame.time)))
    except (TooManyPixels, UndecodableInput):
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)  # FFmpegError's str() names a '<none>' file
        raise UndecodableInput(f"cannot decode the video (truncated or corrupt?): {reason}") from exc
    if not frames:
        raise UndecodableInput("the video chunk holds no decodable frame")
    return DecodedVideo(frames, width, height)
