"""The asyncio client: ``async with AsyncClient(url) as c: r = await c.segment("photo.jpg")``.
The same calls, retries and results as ``Client`` (segserve.client.calls); only the waiting differs.
Reading and encoding images (files, PNG, JPEG frames, PyAV) runs in threads, off the event loop."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator, Iterable

import httpx

from segserve.client.calls import (
    DEFAULT_URL,
    STREAM_ERRORS,
    Call,
    checked,
    connection_error,
    connection_lost,
    headers_of,
    image_call,
    retry_wait,
)
from segserve.client.errors import SegserveError
from segserve.client.images import ImageInput, kept_for_overlay, payload
from segserve.client.result import Result
from segserve.client.retry import RETRIED_ERRORS, RetryPolicy
from segserve.client.video import AsyncFrameStream, VideoFrame, VideoStream, chunks, open_stream, read_frames

_END = object()


class AsyncClient:
    """As ``Client`` (segserve.client.sync), for asyncio. ``transport``: an httpx async transport."""

    def __init__(self, url: str = DEFAULT_URL, *, model: str | None = None, api_key: str | None = None,
                 timeout_ms: int | None = None, retry: RetryPolicy = RetryPolicy(), timeout_s: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.model, self.timeout_ms, self.retry, self.timeout_s = model, timeout_ms, retry, timeout_s
        self._http = httpx.AsyncClient(base_url=url, headers=headers_of(api_key or os.environ.get("SEGSERVE_API_KEY")),
                                       transport=transport, timeout=timeout_s)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(call.method, call.path, **call.request_kwargs(self.timeout_s))
            except RETRIED_ERRORS as exc:
                wait = retry_wait(self.retry, attempt, call, None)
                if wait is None:
                    raise connection_error(call, exc, attempt) from exc
            else:
                wait = retry_wait(self.retry, attempt, call, response)
                if wait is None:
                    return checked(response)
            await asyncio.sleep(wait)

    async def segment(self, image: ImageInput, model: str | None = None, *, timeout_ms: int | None = None, **options: Any) -> Result:
        data = await asyncio.to_thread(payload, image)
        started = time.perf_counter()
        response = await self.send(image_call(data, model or self.model, "json", options, timeout_ms or self.timeout_ms))
        return Result(response.json(), (time.perf_counter() - started) * 1000, kept_for_overlay(image, data))

    async def overlay(self, image: ImageInput, model: str | None = None, *, timeout_ms: int | None = None, **options: Any) -> bytes:
        data = await asyncio.to_thread(payload, image)
        return (await self.send(image_call(data, model or self.model, "overlay", options, timeout_ms or self.timeout_ms))).content

    async def segment_many(self, images: Iterable[ImageInput], model: str | None = None, *, concurrency: int = 4,
                           return_exceptions: bool = False, **options: Any) -> AsyncIterator[Result | SegserveError]:
        """As ``Client.segment_many``: in order, at most ``concurrency`` in flight."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")

        async def one(image):
            try:
                return await self.segment(image, model, **options)
            except SegserveError as exc:
                if return_exceptions:
                    return exc
                raise

        pending: list[asyncio.Task] = []
        try:
            for image in images:
                if len(pending) == concurrency:
                    yield await pending.pop(0)
                pending.append(asyncio.ensure_future(one(image)))
            while pending:
                yield await pending.pop(0)
        finally:
            for task in pending:
                task.cancel()

    async def models(self) -> dict:
        return (await self.send(Call("GET", "/v1/models"))).json()

    def stream(self, source: str | os.PathLike, model: str | None = None, *, chunk_frames: int = 16,
               keyframe_interval: int | None = None, keyframe_threshold: float | None = None, timeout_ms: int | None = None,
               stream_id: str | None = None, **options: Any) -> AsyncFrameStream:
        """As ``Client.stream``: ``async for frame in client.stream("clip.mp4", chunk_frames=8)``."""
        video = open_stream(model or self.model, chunk_frames, keyframe_interval, keyframe_threshold,
                            timeout_ms or self.timeout_ms, stream_id, options)

        async def frames() -> AsyncIterator[VideoFrame]:
            source_chunks = chunks(read_frames(source), chunk_frames)
            while (chunk := await asyncio.to_thread(next, source_chunks, _END)) is not _END:
                async for frame in self._chunk_frames(video, chunk):
                    yield frame

        return AsyncFrameStream(frames(), video.stats)

    async def _chunk_frames(self, video: VideoStream, chunk: list) -> AsyncIterator[VideoFrame]:
        call = await asyncio.to_thread(video.call, chunk)  # the frames' JPEGs
        given = 0
        for attempt in range(1, self.retry.attempts + 1):
            answer = video.answer(chunk, skip=given)
            try:
                async for line in self.lines(call):
                    if (frame := answer.read(line)) is not None:
                        given += 1
                        yield frame
                video.finish(answer, chunk)
                return
            except SegserveError as exc:
                wait = video.recover(exc, call, self.retry, attempt)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
        raise video.unsettled()

    async def lines(self, call: Call) -> AsyncIterator[str]:
        """As ``Client.lines``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._http.stream(call.method, call.path, **call.request_kwargs(self.timeout_s)) as response:
                    wait = retry_wait(self.retry, attempt, call, response)
                    if wait is None:
                        if not response.is_success:
                            await response.aread()
                            checked(response)  # raises the server's error
                        try:
                            async for line in response.aiter_lines():
                                if line:
                                    yield line
                        except STREAM_ERRORS as exc:
                            raise connection_lost(call, exc) from exc
                        return
            except RETRIED_ERRORS as exc:
                wait = retry_wait(self.retry, attempt, call, None)
                if wait is None:
                    raise connection_error(call, exc, attempt) from exc
            await asyncio.sleep(wait)
