"""GRPCInferenceService: KServe v2 health, metadata and ModelInfer over the ModelManager the
HTTP routes use, so gRPC requests share models, batchers and metrics with HTTP ones."""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np

from segserve import __version__
from segserve.errors import BadParameter, ModelNotFound, ServiceError
from segserve.logs import request_id_from
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.pipelines import ImageResult, OutputFormat, Pipeline
from segserve.pipelines.base import render_json
from segserve.transport.grpc import inference_pb2 as pb
from segserve.transport.grpc import inference_pb2_grpc as pb_grpc
from segserve.transport.grpc.errors import details_of, status_of
from segserve.transport.grpc.tensors import (
    IMAGE,
    LABELS,
    MASKS_JSON,
    check_format,
    input_images,
    join_bytes_tensor,
    request_options,
    requested_outputs,
    timeout_ms_of,
)
from segserve.transport.observe import Observation

log = logging.getLogger(__name__)

# KServe v2 platform names, as Triton reports them, for segserve's engine backends.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch"}
Tensor = pb.ModelMetadataResponse.TensorMetadata


async def segment_all(pipeline: Pipeline, images: list[bytes], options, deadline: float) -> list[ImageResult]:
    """Submit every image at once so they can share a batch; the first failure (or the RPC
    being cancelled) cancels the rest, which the batcher then drops before compute."""
    tasks = [asyncio.ensure_future(pipeline.segment_image(data, options, OutputFormat.json, deadline)) for data in images]
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

    def _pipeline(self, name: str, version: str) -> Pipeline:
        """The ready model by name (empty: the default model), as HTTP's ``?model=`` picks it."""
        pipeline = self._manager.get(name or None)
        if version and version != str(pipeline.entry.version):
            raise ModelNotFound(f"model {pipeline.config.name} has no version {version}; it serves {pipeline.entry.version}")
        return pipeline

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        manager = self._manager
        return pb.ServerReadyResponse(ready=manager.ready and bool(manager.ready_models()))

    async def ModelReady(self, request, context):
        status = self._manager.models.get(request.name or self._manager.default_model or "")
        ready = status is not None and status.ready and request.version in ("", str(status.entry.version))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="segserve", version=__version__, extensions=[])

    async def ModelMetadata(self, request, context):
        try:
            pipeline = self._pipeline(request.name, request.version)
        except ServiceError as exc:
            await context.abort(status_of(exc), details_of(exc))
        config = pipeline.config
        outputs = [Tensor(name=MASKS_JSON, datatype="BYTES", shape=[-1])]
        if pipeline.label_map:
            outputs.append(Tensor(name=LABELS, datatype="UINT8", shape=[-1, -1, -1]))
        backend = pipeline.engine_info.backend
        return pb.ModelMetadataResponse(
            name=config.name,
            versions=[str(pipeline.entry.version)],
            platform=PLATFORMS.get(backend, backend),
            inputs=[Tensor(name=IMAGE, datatype="BYTES", shape=[-1])],
            outputs=outputs,
        )

    async def ModelInfer(self, request, context):
        request_id = request_id_from(dict(context.invocation_metadata() or ()).get("x-request-id"), request.id)
        obs = Observation(self._metrics, "grpc", self._manager.label(request.model_name), request_id)
        code = grpc.StatusCode.OK
        try:
            pipeline = self._pipeline(request.model_name, request.model_version)
            obs.model = pipeline.config.name
            return await self._infer(obs, pipeline, request, context)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            remaining = context.time_remaining()
            code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # noqa: BLE001 - classified, logged and answered by obs.error
            error = obs.error(exc)
            code = status_of(error)
            await context.abort(code, details_of(error))
        finally:
            obs.done(code.name)

    async def _infer(
        self, obs: Observation, pipeline: Pipeline, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        settings = self._manager.settings
        config = pipeline.config
        options = request_options(request)
        check_format(options)
        timeout_ms = timeout_ms_of(options)
        parsed = pipeline.parse_options(options)
        outputs = requested_outputs(request)
        images = input_images(request, settings.max_body_bytes)
        if len(images) > config.max_batch_size:  # one request must not take the whole queue
            raise BadParameter(f"{IMAGE} holds {len(images)} images; at most {config.max_batch_size} (max_batch_size) per request")
        if LABELS in outputs:
            if not pipeline.label_map or len(config.classes) > 256:
                raise BadParameter(f"{LABELS} (UINT8) is only answered by semantic models of at most 256 classes")
            if len(images) != 1:
                raise BadParameter(f"{LABELS} is only answered for one image; {IMAGE} holds {len(images)}")
        # The tighter of the client's gRPC deadline and timeout_ms (or the server default).
        deadline = obs.deadline(timeout_ms, settings.request_timeout_s, context.time_remaining())
        with pipeline.admit(cost=len(images)):
            results = await segment_all(pipeline, images, parsed, deadline)

        response = pb.ModelInferResponse(model_name=config.name, model_version=str(pipeline.entry.version), id=request.id)
        for output in outputs:
            if output == MASKS_JSON:
                total_s = obs.elapsed()
                bodies = [render_json(pipeline, r, total_s) for r in results]
                response.outputs.add(name=MASKS_JSON, datatype="BYTES", shape=[len(bodies)])
                response.raw_output_contents.append(join_bytes_tensor(bodies))
            else:
                labels = results[0].encoded.label_map.astype(np.uint8, copy=False)
                response.outputs.add(name=LABELS, datatype="UINT8", shape=[1, *labels.shape])
                response.raw_output_contents.append(labels.tobytes())
        return response
