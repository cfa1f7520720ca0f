"""POST /segment/video: a video chunk, or ordered still frames, in; masks per frame out.

Status codes besides /segment's: 409 when ``sequence`` is not the one the stream expects
(repeated or out of order; the error says which one it expects), 422 ``too_many_frames``
when a chunk holds more frames than ``max_frames`` or the server's limit, 503 when every
stream slot holds a busy stream. Only the body size is 413.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import AsyncIterator, Literal

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import StreamingResponse

from segserve.codecs.video import VIDEO_TYPES
from segserve.config import Settings
from segserve.errors import BadParameter, ServiceError, UnsupportedMediaType
from segserve.pipelines import OutputFormat
from segserve.pipelines.video import ChunkRun, FrameResult, VideoService
from segserve.pipelines.video_chunks import FrameMapper, PreparedChunk, prepare_images, prepare_video
from segserve.transport.http.body import media_type, multipart_files, read_limited
from segserve.transport.http.errors import service_error_response
from segserve.transport.http.routes import CLIENT_CLOSED, ERRORS, manager_of, run_unless_disconnected
from segserve.transport.http.schemas import ErrorResponse

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
STREAM_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# validated by the model (semantic models take none), exactly as /segment validates them
INSTANCE_OPTIONS = ("score_threshold", "max_instances", "mask_threshold")


@asynccontextmanager
async def video_lifespan(app: FastAPI):
    """Runs inside the app's lifespan, so the models are loaded when it starts."""
    manager = app.state.manager
    service = VideoService(app.state.settings, manager.models, app.state.metrics, manager.codec_pool)
    await service.start()
    app.state.video = service
    try:
        yield
    finally:
        await service.stop()


router = APIRouter(lifespan=video_lifespan)

VIDEO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(VIDEO_TYPES)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"frame": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["frame"],
                }
            },
        },
    }
}


async def read_chunk(
    request: Request, mapper: FrameMapper, settings: Settings, pool, frame_limit: int, frame_stride: int
) -> PreparedChunk:
    kind = media_type(request)
    if kind not in VIDEO_TYPES and kind != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {kind or '(none)'!r} not supported: send {', '.join(sorted(VIDEO_TYPES))} "
            "or multipart/form-data with ordered file fields 'frame'"
        )
    body = await read_limited(request, settings.max_body_bytes)
    loop = asyncio.get_running_loop()
    limits = {"max_frames": frame_limit, "frame_stride": frame_stride, "max_pixels": settings.max_image_pixels}
    if kind == "multipart/form-data":
        parts = await multipart_files(request, body, "frame", max_files=frame_limit * frame_stride)
        return await loop.run_in_executor(pool, partial(prepare_images, [data for data, _ in parts], mapper, **limits))
    return await loop.run_in_executor(pool, partial(prepare_video, body, mapper, **limits))


def frame_json(frame: FrameResult) -> dict:
    return {"index": frame.index, "pts": frame.pts, "keyframe": frame.keyframe, **frame.body}


def dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def timing_ms(decode_s: float, segment_started: float, started: float) -> dict:
    now = time.perf_counter()
    return {
        "decode": round(decode_s * 1000, 3),
        "segment": round((now - segment_started) * 1000, 3),
        "total": round((now - started) * 1000, 3),
    }


async def ndjson_lines(run: ChunkRun, summary: dict, decode_s: float, segment_started: float, started: float) -> AsyncIterator[bytes]:
    """One line per frame as it completes, then the summary line (no "frames"); an error
    after the 200 went out becomes a last line {"error": {...}}."""
    keyframes = 0
    try:
        async for frame in run.results():
            keyframes += frame.keyframe
            yield dumps(frame_json(frame)) + b"\n"
        yield dumps({**summary, "keyframes": keyframes, "timing_ms": timing_ms(decode_s, segment_started, started)}) + b"\n"
    except ServiceError as exc:
        yield dumps({"error": {"code": exc.code, "message": exc.message}}) + b"\n"
    except Exception:
        log.exception("video chunk failed while streaming")
        yield dumps({"error": {"code": "internal_error", "message": "internal error; see the server log"}}) + b"\n"
    finally:
        run.cancel()


@router.post(
    "/segment/video",
    summary="Segment a video chunk",
    description="A video chunk (video/mp4, video/webm, video/x-matroska) or multipart/form-data with ordered file "
    "fields `frame` (JPEG/PNG/WebP, one size). Every `frame_stride`-th frame is segmented. Models exported with a "
    "video split compute their deep features on keyframes only: every `keyframe_interval` frames, or with "
    "`keyframe_threshold` whenever the shallow features changed more than that (relative mean absolute change) "
    "since the last keyframe, at least every `keyframe_interval` frames (the model's default when omitted). "
    "`stream_id` + `sequence` (0, 1, 2, ...) continue a stream's keyframe state across chunks; a repeated or "
    "out-of-order sequence is 409, and a stream the server dropped (idle, or evicted for a newer one) starts "
    f"afresh (`new_stream: true`). With `Accept: {NDJSON}` one JSON line per frame is streamed as frames "
    "complete, then a summary line. `format=png` gives each frame's label map as a base64 PNG in `png`. "
    "Instance models run every frame (each is a keyframe) through their batcher, take /segment's "
    "`score_threshold`, `max_instances` and `mask_threshold`, and give each frame's `instances` as /segment does "
    "(`png`: the instance-id map).",
    responses={200: {"content": {NDJSON: {}}}, 409: {"model": ErrorResponse}, **ERRORS},
    openapi_extra=VIDEO_BODY,
)
async def segment_video(
    request: Request,
    model: str | None = Query(None, description="model name; the server default when omitted"),
    format: Literal["json", "png"] = Query("json", description="json (RLE segments, default) or png (base64 label maps)"),
    timeout_ms: int | None = Query(None, ge=1, le=600_000, description="deadline for the chunk (default: server setting)"),
    keyframe_interval: int | None = Query(None, ge=1, le=10_000, description="a keyframe every N frames (1 = every frame)"),
    keyframe_threshold: float | None = Query(None, ge=0, description="adaptive keyframes: relative shallow-feature change"),
    max_frames: int | None = Query(None, ge=1, description="refuse chunks with more frames (capped by the server limit)"),
    frame_stride: int = Query(1, ge=1, le=1000, description="segment every N-th frame"),
    stream_id: str | None = Query(None, pattern=STREAM_ID_PATTERN, description="continue this stream's keyframe state"),
    sequence: int | None = Query(None, ge=0, description="chunk number within the stream: 0, 1, 2, ..."),
    score_threshold: float | None = Query(None, description="instance models: as for /segment"),
    max_instances: int | None = Query(None, description="instance models: as for /segment"),
    mask_threshold: float | None = Query(None, description="instance models: as for /segment"),
) -> Response:
    started = time.perf_counter()
    manager = manager_of(request)
    settings = manager.settings
    metrics = request.app.state.metrics
    name = model or manager.default_model or "-"
    status = 500
    try:
        if sequence is not None and stream_id is None:
            raise BadParameter("sequence needs a stream_id")
        served = manager.get(model)
        config = served.entry.config
        name = config.name
        video_model = request.app.state.video.model(name)
        options = video_model.parse_options({k: v for k, v in request.query_params.items() if k in INSTANCE_OPTIONS})
        policy = video_model.policy(keyframe_interval, keyframe_threshold)
        frame_limit = min(max_frames or settings.video_max_frames, settings.video_max_frames)
        chunk = await read_chunk(request, video_model.mapper, settings, manager.codec_pool, frame_limit, frame_stride)
        decode_s = time.perf_counter() - started
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms else settings.request_timeout_s)
        segment_started = time.perf_counter()
        run, new_stream = await request.app.state.video.start_chunk(
            video_model, chunk, policy, OutputFormat(format), options, deadline, stream_id, sequence
        )
        summary = {
            "model": name,
            "task": config.task.value,
            "width": chunk.width,
            "height": chunk.height,
            "classes": config.classes,
            "stream_id": stream_id,
            "sequence": sequence,
            "new_stream": new_stream,
            "keyframe_policy": {"interval": policy.interval, "threshold": policy.threshold, "split": video_model.split},
        }
        if NDJSON in request.headers.get("accept", ""):
            status = 200
            return StreamingResponse(ndjson_lines(run, summary, decode_s, segment_started, started), media_type=NDJSON)
        try:
            frames = await run_unless_disconnected(request, run.collect())
        finally:
            run.cancel()  # a no-op once the chunk is done; stops it when the client went away
        if frames is None:
            status = CLIENT_CLOSED
            return Response(status_code=CLIENT_CLOSED)
        body = {
            **summary,
            "frames": [frame_json(f) for f in frames],
            "keyframes": sum(f.keyframe for f in frames),
            "timing_ms": timing_ms(decode_s, segment_started, started),
        }
        status = 200
        return Response(dumps(body), media_type="application/json")
    except ServiceError as exc:
        response = service_error_response(exc)
        status = response.status_code
        return response
    finally:
        metrics.requests.labels(name, "segment_video", str(status)).inc()
        metrics.latency.labels(name, "segment_video").observe(time.perf_counter() - started)
