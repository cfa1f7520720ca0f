"""GRPCInferenceService: KServe v2 health, metadata and ModelInfer over the ModelManager the
HTTP routes use, so gRPC requests share models, batchers and metrics with HTTP ones."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np

from segserve import __version__
from segserve.errors import BadParameter, ModelNotFound, ServiceError
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.pipelines import ImageResult, OutputFormat, ServedModel
from segserve.pipelines.render import render_json
from segserve.transport.grpc import inference_pb2 as pb
from segserve.transport.grpc import inference_pb2_grpc as pb_grpc
from segserve.transport.grpc.errors import details_of, status_of
from segserve.transport.grpc.tensors import (
    IMAGE, LABELS, MASKS_JSON, check_format, input_images, join_bytes_tensor, request_options,
    requested_outputs, timeout_ms_of,
)

log = logging.getLogger(__name__)

# KServe v2 platform names, as Triton reports them, for segserve's engine backends.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch", "tensorrt": "tensorrt_plan"}
# Failures that are the server's side of the story, worth a log line (HTTP logs its 5xx).
SERVER_SIDE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
Tensor = pb.ModelMetadataResponse.TensorMetadata


async def segment_all(served: ServedModel, images: list[bytes], options, deadline: float) -> list[ImageResult]:
    """Submit every image at once so they can share a batch; the first failure (or the RPC
    being cancelled) cancels the rest, which the batcher then drops before compute."""
    tasks = [asyncio.ensure_future(served.segment_image(data, options, OutputFormat.json, deadline)) for data in images]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, manager: ModelManager, metrics: Metrics):
        self._manager = manager
        self._metrics = metrics

    def _served(self, name: str, version: str) -> ServedModel:
        """The ready model by name (empty: the default model), as HTTP's ``?model=`` picks it."""
        served = self._manager.get(name or None)
        if version and version != str(served.entry.version):
            raise ModelNotFound(f"model {served.entry.config.name} has no version {version}; it serves {served.entry.version}")
        return served

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        manager = self._manager
        return pb.ServerReadyResponse(ready=manager.ready and any(s.state == "READY" for s in manager.models.values()))

    async def ModelReady(self, request, context):
        status = self._manager.models.get(request.name or self._manager.default_model or "")
        ready = status is not None and status.state == "READY" and request.version in ("", str(status.entry.version))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="segserve", version=__version__, extensions=[])

    async def ModelMetadata(self, request, context):
        try:
            served = self._served(request.name, request.version)
        except ServiceError as exc:
            await context.abort(status_of(exc), details_of(exc))
        config = served.entry.config
        outputs = [Tensor(name=MASKS_JSON, datatype="BYTES", shape=[-1])]
        if config.task.value == "semantic":
            outputs.append(Tensor(name=LABELS, datatype="UINT8", shape=[-1, -1, -1]))
        return pb.ModelMetadataResponse(
            name=config.name,
            versions=[str(served.entry.version)],
            platform=PLATFORMS.get(served.engine_info.backend, served.engine_info.backend),
            inputs=[Tensor(name=IMAGE, datatype="BYTES", shape=[-1])],
            outputs=outputs,
        )

    async def ModelInfer(self, request, context):
        started = time.perf_counter()
        name = request.model_name or self._manager.default_model or "-"
        code = grpc.StatusCode.INTERNAL
        try:
            served = self._served(request.model_name, request.model_version)
            name = served.entry.config.name
            response = await self._infer(served, request, context, started)
            code = grpc.StatusCode.OK
            return response
        except ServiceError as exc:
            code = status_of(exc)
            if code in SERVER_SIDE:
                log.warning("%s: %s", exc.code, exc.message)
            await context.abort(code, details_of(exc))
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            remaining = context.time_remaining()
            code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
            raise
        except Exception:
            log.exception("unhandled error in ModelInfer")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            self._metrics.requests.labels(name, "grpc", code.name).inc()
            self._metrics.latency.labels(name, "grpc").observe(time.perf_counter() - started)

    async def _infer(
        self, served: ServedModel, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, started: float
    ) -> pb.ModelInferResponse:
        settings = self._manager.settings
        config = served.entry.config
        options = request_options(request)
        check_format(options)
        timeout_ms = timeout_ms_of(options)
        parsed = served.parse_options(options)
        outputs = requested_outputs(request)
        images = input_images(request, settings.max_body_bytes)
        if LABELS in outputs:
            if config.task.value != "semantic" or len(config.classes) > 256:
                raise BadParameter(f"{LABELS} (UINT8) is only answered by semantic models of at most 256 classes")
            if len(images) != 1:
                raise BadParameter(f"{LABELS} is only answered for one image; {IMAGE} holds {len(images)}")
        # The tighter of the client's gRPC deadline and timeout_ms (or the server default).
        timeout_s = timeout_ms / 1000 if timeout_ms else settings.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_s = min(timeout_s, remaining)
        results = await segment_all(served, images, parsed, time.monotonic() + timeout_s)

        response = pb.ModelInferResponse(model_name=config.name, model_version=str(served.entry.version), id=request.id)
        for output in outputs:
            if output == MASKS_JSON:
                total_s = time.perf_counter() - started
                bodies = [render_json(config.name, config.task.value, config.classes, r, total_s) for r in results]
                response.outputs.add(name=MASKS_JSON, datatype="BYTES", shape=[len(bodies)])
                response.raw_output_contents.append(join_bytes_tensor(bodies))
            else:
                labels = results[0].label_map.astype(np.uint8, copy=False)
                response.outputs.add(name=LABELS, datatype="UINT8", shape=[1, *labels.shape])
                response.raw_output_contents.append(labels.tobytes())
        return response
