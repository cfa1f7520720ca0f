"""The API key on gRPC: a server interceptor that answers UNAUTHENTICATED unless the call's
metadata carries the key (``authorization: Bearer <key>`` or ``x-api-key: <key>``, the names
HTTP uses; tritonclient sends them with ``headers={"x-api-key": key}``). The refusal runs in
place of the method, before the request message is even parsed.

Open without the key: ServerLive and ServerReady, the probes (as /healthz and /readyz are
over HTTP). ModelReady, the metadata calls and ModelInfer need it."""

from __future__ import annotations

import logging

import grpc

from segserve.errors import Unauthorized
from segserve.metrics import Metrics
from segserve.transport.access import ApiKey
from segserve.transport.grpc.errors import details_of, status_of

log = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService/"
PROBES = frozenset({SERVICE + "ServerLive", SERVICE + "ServerReady"})


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, key: ApiKey, metrics: Metrics, open_methods: frozenset[str] = PROBES):
        self._key = key
        self._open = open_methods
        self._refused = metrics.unauthorized.labels("grpc")

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        if method in self._open:
            return await continuation(handler_call_details)
        try:
            self._key.check(handler_call_details.invocation_metadata or ())
        except Unauthorized as exc:
            self._refused.inc()
            log.debug("refused %r: %s", method, exc.message)
            return await _refusal(continuation, handler_call_details, exc)
        return await continuation(handler_call_details)


async def _refusal(continuation, handler_call_details, exc: Unauthorized) -> grpc.RpcMethodHandler:
    """A handler of the method's own kind that aborts: the request stays unparsed bytes."""
    handler = await continuation(handler_call_details)
    code, details = status_of(exc), details_of(exc)

    async def abort(request, context: grpc.aio.ServicerContext):
        await context.abort(code, details)

    async def abort_stream(request, context: grpc.aio.ServicerContext):
        await context.abort(code, details)
        yield  # an async generator, as a streaming handler is

    if handler is None:  # an unknown method: refused like any other (HTTP: 401, not 404)
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, response_serializer=handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, response_serializer=handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(abort, response_serializer=handler.response_serializer)
