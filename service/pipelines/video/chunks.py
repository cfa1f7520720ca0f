"""A video chunk in: decoded frames mapped to a model's input, and the order frames run in.

A model's pipeline says how a frame of a given size becomes its input (it is the
``FrameMapper``): semantic models letterbox to their fixed input; instance models resize
like their image path does. Decoding asks the mapper for the smallest size worth decoding at, so large
frames are scaled down once, by the decoder -- unless the frames are kept to draw overlays on
(``keep_frames``): those are decoded at their full size, within a pixel budget for the chunk.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Hashable, Iterable, Protocol

import numpy as np

from segserve.codecs.image import decode_image
from segserve.codecs.video import TooManyFrames, decode_video
from segserve.errors import BadParameter, TooManyPixels, UndecodableInput


class FrameMapper(Protocol):
    def geometry(self, height: int, width: int) -> Hashable:
        """How frames of this size map to the model input (a change forces a keyframe)."""
        ...

    def decode_size(self, geometry: Hashable) -> tuple[int, int]:
        """The smallest (h, w) frames may be decoded at without losing model-input detail."""
        ...

    def to_input(self, geometry: Hashable, rgb: np.ndarray) -> Any:
        """A decoded (h, w, 3) uint8 frame -> what the model's frame runner takes."""
        ...


@dataclass(frozen=True)
class PreparedChunk:
    inputs: list[Any]  # per frame, in order: the mapper's model inputs
    indices: list[int]  # each frame's position in the chunk (before frame_stride)
    pts: list[float | None]  # presentation times, seconds (None for still images)
    height: int  # frames as received
    width: int
    geometry: Hashable  # one for the whole chunk
    frames: list[np.ndarray] | None = None  # keep_frames: each frame's (height, width, 3) RGB as received


def _decode_size(mapper: FrameMapper, keep_frames: bool):
    """What frames of a given size decode at: full size when they are kept (overlays), else the
    smallest the model input allows."""
    if keep_frames:
        return lambda height, width: (height, width)
    return lambda height, width: mapper.decode_size(mapper.geometry(height, width))


def _check_kept_pixels(frames: int, height: int, width: int, max_kept_pixels: int) -> None:
    if frames * height * width > max_kept_pixels:
        raise TooManyPixels(
            f"format=overlay keeps every frame at full size: {frames} frames of {width}x{height} exceed the chunk's "
            f"budget of {max_kept_pixels} pixels; send fewer frames per chunk (or a larger frame_stride)"
        )


def prepare_video(
    data: bytes, mapper: FrameMapper, *, max_frames: int, frame_stride: int, max_pixels: int, max_kept_pixels: int | None = None
) -> PreparedChunk:
    """Decode a video chunk straight to model inputs (blocking: codec pool). With
    ``max_kept_pixels`` the frames are kept at full size too, at most that many pixels in all."""
    video = decode_video(
        data,
        max_frames=max_frames,
        frame_stride=frame_stride,
        max_pixels=max_pixels,
        scale_to=_decode_size(mapper, max_kept_pixels is not None),
    )
    geometry = mapper.geometry(video.height, video.width)
    kept = None
    if max_kept_pixels is not None:
        _check_kept_pixels(len(video.frames), video.height, video.width, max_kept_pixels)
        kept = [f.rgb for f in video.frames]
    return PreparedChunk(
        [mapper.to_input(geometry, f.rgb) for f in video.frames],
        [f.index for f in video.frames],
        [f.pts for f in video.frames],
        video.height,
        video.width,
        geometry,
        kept,
    )


def prepare_images(
    images: list[bytes], mapper: FrameMapper, *, max_frames: int, frame_stride: int, max_pixels: int, max_kept_pixels: int | None = None
) -> PreparedChunk:
    """Every ``frame_stride``-th of ordered still frames (JPEG/PNG/WebP) to model inputs;
    all must be one size. ``max_kept_pixels``: as for ``prepare_video``."""
    if not images:
        raise BadParameter("multipart body needs at least one file field 'frame'")
    indices = list(range(0, len(images), frame_stride))
    if len(indices) > max_frames:
        raise TooManyFrames(f"{len(indices)} frames (after frame_stride={frame_stride}); at most {max_frames} per chunk")
    keep = max_kept_pixels is not None
    scale_to = _decode_size(mapper, keep)
    inputs, kept, size, geometry = [], [], None, None
    for index in indices:
        decoded = decode_image(images[index], max_pixels, scale_to)
        if size is None:  # the first frame fixes the chunk's size and geometry
            size = decoded.height, decoded.width
            geometry = mapper.geometry(*size)
            if keep:
                _check_kept_pixels(len(indices), *size, max_kept_pixels)
        elif (decoded.height, decoded.width) != size:
            raise UndecodableInput(f"frames differ in size ({size[1]}x{size[0]} vs {decoded.width}x{decoded.height})")
        inputs.append(mapper.to_input(geometry, decoded.rgb))
        if keep:
            kept.append(decoded.rgb)
    return PreparedChunk(inputs, indices, [None] * len(inputs), *size, geometry, kept if keep else None)


async def in_order(work: Iterable[Awaitable], window: int) -> AsyncIterator:
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
