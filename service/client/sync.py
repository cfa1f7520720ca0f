"""The blocking client: ``Client(url).segment("photo.jpg").label_map``."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator

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
from segserve.client.video import FrameStream, VideoFrame, VideoStream, chunks, open_stream, read_frames


class Client:
    """A segserve server over HTTP. Thread-safe; one connection pool; ``with Client(...) as c:``.

    ``model``: the default for every call (else the server's default). ``timeout_ms``: the default
    deadline of a call, retries included (else the server's). ``transport``: an httpx transport
    (e.g. a test's in-process app)."""

    def __init__(self, url: str = DEFAULT_URL, *, model: str | None = None, api_key: str | None = None,
                 timeout_ms: int | None = None, retry: RetryPolicy = RetryPolicy(), timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.model, self.timeout_ms, self.retry, self.timeout_s = model, timeout_ms, retry, timeout_s
        self._http = httpx.Client(base_url=url, headers=headers_of(api_key or os.environ.get("SEGSERVE_API_KEY")),
                                  transport=transport, timeout=timeout_s)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the wire ------------------------------------------------------------------------
    def send(self, call: Call) -> httpx.Response:
        """``call`` until it is answered other than 503, retrying as ``self.retry`` says; raises
        SegserveError for an error answer or when the server cannot be reached."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(call.method, call.path, **call.request_kwargs(self.timeout_s))
            except RETRIED_ERRORS as exc:
                wait = retry_wait(self.retry, attempt, call, None)
                if wait is None:
                    raise connection_error(call, exc, attempt) from exc
            else:
                wait = retry_wait(self.retry, attempt, call, response)
                if wait is None:
                    return checked(response)
            time.sleep(wait)

    # -- images --------------------------------------------------------------------------
    def segment(self, image: ImageInput, model: str | None = None, *, timeout_ms: int | None = None, **options: Any) -> Result:
        """One image -> its Result. ``options``: the model's query options (e.g. score_threshold)."""
        data = payload(image)
        started = time.perf_counter()
        response = self.send(image_call(data, model or self.model, "json", options, timeout_ms or self.timeout_ms))
        return Result(response.json(), (time.perf_counter() - started) * 1000, kept_for_overlay(image, data))

    def overlay(self, image: ImageInput, model: str | None = None, *, timeout_ms: int | None = None, **options: Any) -> bytes:
        """The server's ``format=overlay``: a JPEG of the image with its masks drawn in."""
        return self.send(image_call(payload(image), model or self.model, "overlay", options, timeout_ms or self.timeout_ms)).content

    def segment_many(self, images: Iterable[ImageInput], model: str | None = None, *, concurrency: int = 4,
                     return_exceptions: bool = False, **options: Any) -> Iterator[Result | SegserveError]:
        """Results in the order of ``images``, at most ``concurrency`` requests in flight (and as
        many images read ahead). ``return_exceptions``: a failed image yields its SegserveError
        instead of ending the iteration."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")

        def one(image):
            try:
                return self.segment(image, model, **options)
            except SegserveError as exc:
                if return_exceptions:
                    return exc
                raise

        with ThreadPoolExecutor(concurrency, thread_name_prefix="segserve-client") as pool:
            pending: deque[Future] = deque()
            try:
                for image in images:
                    if len(pending) == concurrency:
                        yield pending.popleft().result()
                    pending.append(pool.submit(one, image))
                while pending:
                    yield pending.popleft().result()
            finally:  # the caller stopped early, or an image failed: send nothing more
                for future in pending:
                    future.cancel()

    def models(self) -> dict:
        """``GET /v1/models``: {"default_model", "models": [...]}."""
        return self.send(Call("GET", "/v1/models")).json()

    # -- video ---------------------------------------------------------------------------
    def stream(self, source: str | os.PathLike, model: str | None = None, *, chunk_frames: int = 16,
               keyframe_interval: int | None = None, keyframe_threshold: float | None = None, timeout_ms: int | None = None,
               stream_id: str | None = None, **options: Any) -> FrameStream:
        """The frames of a video file, a folder of frames or a camera/URL, segmented as one stream
        in chunks of ``chunk_frames``, yielded in order (segserve.client.video). ``timeout_ms``:
        each chunk's deadline. ``options``: the model's (e.g. score_threshold)."""
        video = open_stream(model or self.model, chunk_frames, keyframe_interval, keyframe_threshold,
                            timeout_ms or self.timeout_ms, stream_id, options)

        def frames() -> Iterator[VideoFrame]:
            for chunk in chunks(read_frames(source), chunk_frames):
                yield from self._chunk_frames(video, chunk)

        return FrameStream(frames(), video.stats)

    def _chunk_frames(self, video: VideoStream, chunk: list) -> Iterator[VideoFrame]:
        call = video.call(chunk)
        given = 0
        for attempt in range(1, self.retry.attempts + 1):
            answer = video.answer(chunk, skip=given)
            try:
                for line in self.lines(call):
                    if (frame := answer.read(line)) is not None:
                        given += 1
                        yield frame
                video.finish(answer, chunk)
                return
            except SegserveError as exc:
                wait = video.recover(exc, call, self.retry, attempt)
                if wait is None:
                    raise
                time.sleep(wait)
        raise video.unsettled()

    def lines(self, call: Call) -> Iterator[str]:
        """``call``'s streamed answer line by line (NDJSON), sent again as ``send`` does until
        its 200 begins; an answer cut off after that raises SegserveError "connection_lost"."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._http.stream(call.method, call.path, **call.request_kwargs(self.timeout_s)) as response:
                    wait = retry_wait(self.retry, attempt, call, response)
                    if wait is None:
                        if not response.is_success:
                            response.read()
                            checked(response)  # raises the server's error
                        try:
                            yield from filter(None, response.iter_lines())
                        except STREAM_ERRORS as exc:
                            raise connection_lost(call, exc) from exc
                        return
            except RETRIED_ERRORS as exc:
                wait = retry_wait(self.retry, attempt, call, None)
                if wait is None:
                    raise connection_error(call, exc, attempt) from exc
            time.sleep(wait)
