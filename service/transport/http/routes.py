"""HTTP routes: parse and validate, hand the work to the model, render the answer."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect

from segserve.errors import ModelNotFound, ModelNotReady
from segserve.model_manager import ModelManager, ModelStatus
from segserve.pipelines import PIPELINES, ImageResult, OutputFormat, Pipeline
from segserve.pipelines.base import COMMON_OPTIONS, FORMAT, render_json
from segserve.pipelines.options import MODEL, TIMEOUT_MS
from segserve.transport.http.body import read_image
from segserve.transport.http.errors import service_error_response
from segserve.transport.http.schemas import (
    ErrorResponse,
    InstanceResponse,
    KeypointsResponse,
    ModelInfo,
    ModelList,
    PartInfo,
    SemanticResponse,
)
from segserve.transport.observe import Observation

log = logging.getLogger(__name__)

router = APIRouter()
# /metrics alone: on the main port unless settings.metrics_port serves it (transport/http/app.py)
metrics_router = APIRouter()

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/jpeg", "image/png", "image/webp")},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}, "required": ["image"]}
            },
        },
    }
}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 503, 504)}
# Every 503 (at capacity, not ready) says when to come back.
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                               "schema": {"type": "integer", "minimum": 1}}}
ERRORS[503]["headers"] = RETRY_AFTER
CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer


def manager_of(request: Request) -> ModelManager:
    return request.app.state.manager


def choose_format(query, accept: str) -> OutputFormat:
    fmt = FORMAT.parse(query)
    if fmt is not None:
        return OutputFormat(fmt)
    return OutputFormat.png if "image/png" in accept and "application/json" not in accept else OutputFormat.json


def query_parameters() -> list[dict]:
    """/segment's query for /docs, from the options every task declares (a task's own say which
    tasks take them). The route reads the query itself: FastAPI's parameter binding would cost
    more per request than the JSON and RLE of a cheap model's answer."""
    tasks: dict[str, list[str]] = {}
    declared = {}
    for cls in PIPELINES.values():
        for option in cls.options:
            declared.setdefault(option.name, option)
            tasks.setdefault(option.name, []).append(cls.task.value)
    return [o.openapi() for o in COMMON_OPTIONS] + [
        o.openapi(f"{', '.join(tasks[name])} models") for name, o in declared.items()
    ]


async def _until_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_unless_disconnected(request: Request, work):
    """Await ``work``; if the client disconnects first, cancel it (the batcher then drops the
    request before compute) and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def observed(request: Request, route: str, model: str | None, handle, respond=service_error_response) -> Response:
    """``await handle(obs)`` -> its response; any error -> its JSON error response (``respond``:
    segserve's own body, or KServe v2's on /v2). The request is counted once, with the status
    it got (499 when the client went away first)."""
    obs = Observation(request.app.state.metrics, route, manager_of(request).label(model))
    try:
        response = await handle(obs)
    except asyncio.CancelledError:  # the server cancelled the request (the connection is gone)
        obs.done(str(CLIENT_CLOSED))
        raise
    except ClientDisconnect:  # the client went away mid-upload: not an error, counted as 499
        log.info("%s: client went away while sending the body", route)
        response = Response(status_code=CLIENT_CLOSED)
    except Exception as exc:  # noqa: BLE001 - classified, logged and answered by obs.error
        response = respond(obs.error(exc))
    obs.done(str(response.status_code))
    return response


def render(pipeline: Pipeline, result: ImageResult, total_s: float) -> Response:
    headers = {"X-Batch-Size": str(result.timing.batch_size)}
    if result.encoded.png is not None:
        return Response(result.encoded.png, media_type="image/png", headers=headers)
    if result.encoded.jpeg is not None:
        return Response(result.encoded.jpeg, media_type="image/jpeg", headers=headers)
    return Response(render_json(pipeline, result, total_s), media_type="application/json", headers=headers)


@router.post(
    "/segment",
    summary="Segment one image",
    description="Raw image bytes (image/jpeg, image/png, image/webp) or multipart/form-data with a file field `image`. "
    "Semantic models answer one COCO RLE per class present; instance models one per instance; keypoint models "
    "each instance's box and COCO keypoints. "
    "`format=png` (or `Accept: image/png`) returns the label map (semantic) or instance-id map as a PNG; "
    "`format=overlay` a JPEG of the image with its masks blended in class colours (instances: with boxes and labels; keypoints: boxes, points and skeleton); "
    "keypoint models answer JSON only.",
    response_model=SemanticResponse | InstanceResponse | KeypointsResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **ERRORS},
    openapi_extra={**IMAGE_BODY, "parameters": query_parameters()},
)
async def segment(request: Request) -> Response:
    query = request.query_params
    model = MODEL.parse(query)

    async def handle(obs: Observation) -> Response:
        manager = manager_of(request)
        settings = manager.settings
        deadline = obs.deadline(TIMEOUT_MS.parse(query), settings.request_timeout_s)  # from arrival: body read included
        pipeline = manager.get(model)
        obs.model = pipeline.config.name
        options = pipeline.parse_options(query)
        fmt = pipeline.check_format(choose_format(query, request.headers.get("accept", "")))
        with pipeline.admit():  # refused before the body is read when the model is at capacity
            data = await read_image(request, settings.max_body_bytes, deadline)
            result = await run_unless_disconnected(request, pipeline.segment_image(data, options, fmt, deadline))
        if result is None:
            log.info("segment: client went away; request dropped")
            return Response(status_code=CLIENT_CLOSED)
        return render(pipeline, result, obs.elapsed())

    return await observed(request, "segment", model, handle)


def model_info(status: ModelStatus) -> ModelInfo:
    cfg = status.entry.config
    pipeline = status.pipeline
    engine = pipeline.engine_info if pipeline is not None else None
    return ModelInfo(
        name=cfg.name,
        task=cfg.task.value,
        architecture=cfg.architecture,
        state=status.state,
        reason=status.reason,
        backend=engine.backend if engine else None,
        device=engine.device if engine else None,
        data_path=pipeline.data_path if engine else None,
        version=status.entry.version,
        input={"height": cfg.input.height, "width": cfg.input.width, "resize": cfg.input.resize.value},
        max_batch_size=cfg.max_batch_size,
        batch_size=pipeline.batch_size if pipeline is not None else cfg.batch_size,
        max_queue_delay_ms=cfg.dynamic_batching.max_queue_delay_ms,
        instances=cfg.instances,
        classes=cfg.classes,
        keypoints=cfg.keypoints.model_dump() if cfg.keypoints is not None else None,
        weights={"source": cfg.weights.source, "detail": cfg.weights.detail},
        parts=[
            PartInfo(
                name=part.name,
                state=part.state,
                reason=part.reason,
                backend=part.engine.backend if part.engine else None,
                device=part.engine.device if part.engine else None,
            )
            for part in (pipeline.parts() if pipeline is not None else [])
        ],
    )


@router.get("/v1/models", response_model=ModelList, summary="Models in the repository and their state")
async def list_models(request: Request) -> ModelList:
    manager = manager_of(request)
    return ModelList(default_model=manager.default_model, models=[model_info(s) for s in manager.models.values()])


# Declaring 4XX drops FastAPI's default 422 HTTPValidationError, a body this server never sends.
@router.get("/v1/models/{name}", response_model=ModelInfo, summary="One model",
            responses={404: {"model": ErrorResponse}, "4XX": {"model": ErrorResponse, "description": "Client error"}})
async def get_model(name: str, request: Request) -> ModelInfo | JSONResponse:
    status = manager_of(request).models.get(name)
    if status is None:
        return service_error_response(ModelNotFound(f"unknown model {name!r}"))
    return model_info(status)


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: models loaded and warmed", responses={503: {"model": ErrorResponse, "headers": RETRY_AFTER}})
async def readyz(request: Request) -> Response:
    manager = manager_of(request)
    ready = manager.ready_models()
    if manager.ready and ready:
        return JSONResponse({"status": "ready", "models": ready})
    return service_error_response(ModelNotReady("models are loading" if not manager.ready else "no model is ready"))


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    # rendered off the event loop: a scrape must not hold up requests
    body = await asyncio.to_thread(request.app.state.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
