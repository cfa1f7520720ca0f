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
import re
import time
from functools import partial
from typing import AsyncIterator, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from segserve.codecs.video import VIDEO_TYPES
from segserve.config import Settings
from segserve.errors import BadParameter, UnsupportedMediaType
from segserve.pipelines import OutputFormat
from segserve.pipelines.instance.model import MAX_INSTANCES_LIMIT
from segserve.pipelines.limits import check_deadline
from segserve.pipelines.video.chunks import (
    FrameMapper,
    PreparedChunk,
    prepare_images,
    prepare_video,
)
from segserve.pipelines.video.runs import ChunkRun, FrameResult
from segserve.transport.http.body import media_type, multipart_files, read_limited
from segserve.transport.http.errors import status_of
from segserve.transport.http.routes import (
    CLIENT_CLOSED,
    ERRORS,
    manager_of,
    observed,
    run_unless_disconnected,
)
from segserve.transport.http.schemas import ErrorResponse, VideoResponse
from segserve.pipelines.options import MAX_TIMEOUT_MS
from segserve.transport.observe import Observation

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
STREAM_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# The balancers' affinity header (deploy/haproxy/haproxy.cfg): it names the stream to the
# server too, so a client may send it instead of the stream_id parameter.
STREAM_ID_HEADER = "x-stream-id"


def stream_of(query_id: str | None, header_id: str | None) -> str | None:
    """The chunk's stream: the X-Stream-ID header or the stream_id parameter; both must agree."""
    if header_id is None:
        return query_id
    if query_id is not None and query_id != header_id:
        raise BadParameter(f"X-Stream-ID {header_id!r} and stream_id {query_id!r} name different streams")
    if re.fullmatch(STREAM_ID_PATTERN, header_id) is None:
        raise BadParameter(f"X-Stream-ID must match {STREAM_ID_PATTERN}")
    return header_id
# This route's own query parameters; the others are the model's options, validated by its
# pipeline exactly as /segment validates them (a semantic model takes none).
VIDEO_OPTIONS = ("keyframe_interval", "keyframe_threshold", "max_frames", "frame_stride", "stream_id", "sequence")


router = APIRouter()

VIDEO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(VIDEO_TYPES)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"frame": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}},
                    "required": ["frame"],
                }
            },
        },
    }
}


async def read_chunk(
    request: Request, mapper: FrameMapper, settings: Settings, pool, frame_limit: int, frame_stride: int, deadline: float,
    keep_frames: bool,
) -> PreparedChunk:
    kind = media_type(request)
    if kind not in VIDEO_TYPES and kind != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {kind or '(none)'!r} not supported: send {', '.join(sorted(VIDEO_TYPES))} "
            "or multipart/form-data with ordered file fields 'frame'"
        )
    body = await read_limited(request, settings.max_body_bytes, deadline)
    loop = asyncio.get_running_loop()
    limits = {"max_frames": frame_limit, "frame_stride": frame_stride, "max_pixels": settings.max_image_pixels,
              "max_kept_pixels": settings.max_inflight_pixels if keep_frames else None}
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


async def ndjson_lines(
    obs: Observation, run: ChunkRun, summary: dict, decode_s: float, segment_started: float
) -> AsyncIterator[bytes]:
    """The chunk's head (the summary's fields known before any frame: model, task, size,
    stream), one line per frame as it completes, then the whole summary (no "frames"); an
    error after the 200 went out becomes a last line {"error": {"code", "message", "status"}}. A reader tells frames
    by their "index"."""
    keyframes = 0
    try:
        yield dumps(summary) + b"\n"
        async for frame in run.results():
            keyframes += frame.keyframe
            yield dumps(frame_json(frame)) + b"\n"
        yield dumps({**summary, "keyframes": keyframes, "timing_ms": timing_ms(decode_s, segment_started, obs.started)}) + b"\n"
    except Exception as exc:  # noqa: BLE001 - the 200 is out: the error becomes the last line
        error = obs.error(exc)
        # the status the answer would have had before its 200 went out: a client retries a 503 alike
        yield dumps({"error": {"code": error.code, "message": error.message, "status": status_of(error)}}) + b"\n"
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
    "`stream_id` (or an `X-Stream-ID` header) + `sequence` (0, 1, 2, ...) continue a stream's keyframe state across chunks; a repeated or "
    "out-of-order sequence is 409, and a stream the server dropped (idle, or evicted for a newer one) starts "
    f"afresh (`new_stream: true`; `stream_restarted: true` when it was not the stream's first chunk: its keyframe state was lost). With `Accept: {NDJSON}` the answer is streamed as JSON lines: the chunk's "
    "head (model, task, size, stream), one line per frame as frames complete (each with its `index`), then the summary. `format=png` gives each frame's label map as a base64 PNG in `png`, "
    "`format=overlay` each frame as received with its masks (boxes, labels, keypoints) drawn in, as a base64 JPEG in "
    "`overlay` (the frames are then decoded at full size: at most `max_inflight_pixels` pixels per chunk). "
    "Instance models run every frame (each is a keyframe) through their batcher, take /segment's "
    "`score_threshold`, `max_instances` and `mask_threshold`, and give each frame's `instances` as /segment does "
    "(`png`: the instance-id map).",
    responses={200: {"model": VideoResponse, "content": {NDJSON: {}}}, 409: {"model": ErrorResponse}, **ERRORS},
    openapi_extra=VIDEO_BODY,
)
async def segment_video(
    request: Request,
    model: str | None = Query(None, description="model name; the server default when omitted"),
    format: Literal["json", "png", "overlay"] = Query(
        "json", description="json (RLE segments, default), png (base64 label maps) or overlay (base64 JPEGs)"),
    timeout_ms: int | None = Query(None, ge=1, le=MAX_TIMEOUT_MS, description="deadline for the chunk (default: server setting)"),
    keyframe_interval: int | None = Query(None, ge=1, le=10_000, description="a keyframe every N frames (1 = every frame)"),
    keyframe_threshold: float | None = Query(None, ge=0, description="adaptive keyframes: relative shallow-feature change"),
    max_frames: int | None = Query(None, ge=1, description="refuse chunks with more frames (capped by the server limit)"),
    frame_stride: int = Query(1, ge=1, le=1000, description="segment every N-th frame"),
    stream_query_id: str | None = Query(None, alias="stream_id", pattern=STREAM_ID_PATTERN,
                                        description="continue this stream's keyframe state (or the X-Stream-ID header)"),
    sequence: int | None = Query(None, ge=0, description="chunk number within the stream: 0, 1, 2, ..."),
    score_threshold: float | None = Query(None, ge=0, le=1, description="instance models: as for /segment"),
    max_instances: int | None = Query(None, ge=1, le=MAX_INSTANCES_LIMIT, description="instance models: as for /segment"),
    mask_threshold: float | None = Query(None, ge=0, le=1, description="instance models: as for /segment"),
) -> Response:
    async def handle(obs: Observation) -> Response:
        manager = manager_of(request)
        settings = manager.settings
        deadline = obs.deadline(timeout_ms, settings.request_timeout_s)  # from arrival: body read and decode included
        stream_id = stream_of(stream_query_id, request.headers.get(STREAM_ID_HEADER))
        if sequence is not None and stream_id is None:
            raise BadParameter("sequence needs a stream_id")
        pipeline = manager.get(model)
        config = pipeline.config
        obs.model = config.name
        video = pipeline.video
        options = pipeline.parse_options({k: v for k, v in request.query_params.items() if k not in VIDEO_OPTIONS})
        pipeline.check_format(OutputFormat(format))
        policy = video.policy(keyframe_interval, keyframe_threshold)
        frame_limit = min(max_frames or settings.video_max_frames, settings.video_max_frames)
        # a chunk holds up to its window of frames in the model's batchers at once
        admission = pipeline.admit(cost=video.window)  # refused before the body is read when at capacity
        try:
            chunk = await read_chunk(request, pipeline, settings, manager.codec_pool, frame_limit, frame_stride, deadline,
                                     keep_frames=format == OutputFormat.overlay.value)
            decode_s = obs.elapsed()
            check_deadline(deadline, "segmenting the chunk")
            segment_started = time.perf_counter()
            run, new_stream, stream_restarted = await manager.streams.start_chunk(
                video, chunk, policy, OutputFormat(format), options, deadline, stream_id, sequence
            )
        except BaseException:
            admission.release()
            raise
        run.task.add_done_callback(lambda _: admission.release())  # held until the chunk's frames are done
        summary = {
            "model": config.name,
            "task": config.task.value,
            "width": chunk.width,
            "height": chunk.height,
            "classes": config.classes,
            **pipeline.response_fields(),
            "stream_id": stream_id,
            "sequence": sequence,
            "new_stream": new_stream,
            "stream_restarted": stream_restarted,
            "keyframe_policy": {"interval": policy.interval, "threshold": policy.threshold, "split": video.split},
        }
        if NDJSON in request.headers.get("accept", ""):
            return StreamingResponse(ndjson_lines(obs, run, summary, decode_s, segment_started), media_type=NDJSON)
        try:
            frames = await run_unless_disconnected(request, run.collect())
        finally:
            run.cancel()  # a no-op once the chunk is done; stops it when the client went away
        if frames is None:
            return Response(status_code=CLIENT_CLOSED)
        body = {
            **summary,
            "frames": [frame_json(f) for f in frames],
            "keyframes": sum(f.keyframe for f in frames),
            "timing_ms": timing_ms(decode_s, segment_started, obs.started),
        }
        return Response(dumps(body), media_type="application/json")

    return await observed(request, "segment_video", model, handle)
