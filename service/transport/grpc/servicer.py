"""GRPCInferenceService: KServe v2 health, metadata and ModelInfer over the ModelManager the
HTTP routes use, so gRPC requests share models, batchers and metrics with HTTP ones."""

from __future__ import annotations

import asyncio
import logging

import grpc

from segserve.errors import ServiceError
from segserve.logs import request_id_from
from segserve.metrics import Metrics
from segserve.model_manager import ModelManager
from segserve.pipelines import Pipeline
from segserve.transport import kserve
from segserve.transport.grpc import inference_pb2 as pb
from segserve.transport.grpc import inference_pb2_grpc as pb_grpc
from segserve.transport.grpc.errors import details_of, status_of
from segserve.transport.grpc.tensors import infer_call, infer_response
from segserve.transport.observe import Observation

log = logging.getLogger(__name__)

Tensor = pb.ModelMetadataResponse.TensorMetadata


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, manager: ModelManager, metrics: Metrics):
        self._manager = manager
        self._metrics = metrics

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=kserve.server_ready(self._manager))

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=kserve.model_ready(self._manager, request.name, request.version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**kserve.server_metadata())

    async def ModelMetadata(self, request, context):
        try:
            meta = kserve.model_metadata(kserve.pipeline_for(self._manager, request.name, request.version))
        except ServiceError as exc:
            await context.abort(status_of(exc), details_of(exc))
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[Tensor(**t) for t in meta["inputs"]],
            outputs=[Tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request, context):
        request_id = request_id_from(dict(context.invocation_metadata() or ()).get("x-request-id"), request.id)
        obs = Observation(self._metrics, "grpc", self._manager.label(request.model_name), request_id)
        code = grpc.StatusCode.OK
        try:
            pipeline = kserve.pipeline_for(self._manager, request.model_name, request.model_version)
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
        call = infer_call(request, self._manager.settings.max_body_bytes)
        # The tighter of the client's gRPC deadline and timeout_ms (or the server default).
        outputs = await kserve.infer(obs, self._manager, pipeline, call, context.time_remaining())
        return infer_response(request, pipeline, outputs)
