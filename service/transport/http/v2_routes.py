"""KServe v2 / Open Inference Protocol over HTTP (docs/kserve-http.md): health, metadata and
infer on the same models, batchers and tensor contract (segserve.transport.kserve) as gRPC.

Infer takes JSON tensors and the binary tensor data extension tritonclient.http uses by
default: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the
raw tensors, each input saying its size in ``parameters.binary_data_size``; an output asked
with ``parameters.binary_data: true`` (or every output, with the request parameter
``binary_data_output: true``) comes back the same way. Errors are v2's ``{"error": "..."}``
(transport/http/errors.py) with gRPC's statuses mapped to HTTP ones.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from segserve.errors import BadParameter, ModelNotFound, ModelNotReady, ServiceError, UnsupportedMediaType
from segserve.pipelines import Pipeline
from segserve.transport import kserve
from segserve.transport.http.body import read_limited
from segserve.transport.http.errors import v2_error_response, v2_service_error_response
from segserve.transport.http.routes import CLIENT_CLOSED, manager_of, observed, run_unless_disconnected
from segserve.transport.observe import Observation

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v2", tags=["KServe v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
OUTPUT_PARAMETERS = frozenset({"binary_data"})
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "A KServe v2 inference request: JSON, or (binary tensor data extension) a JSON header of "
        f"`{HEADER_LENGTH}` bytes followed by the tensors' bytes.",
        "content": {"application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


# -- the request ---------------------------------------------------------------------------------
def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadParameter(f"{what} must be a JSON object")
    return value


def _flat(data: Any) -> list:
    """A tensor's ``data``, flat (v2 allows it nested by the shape)."""
    if not isinstance(data, list):
        return [data]
    return [item for element in data for item in _flat(element)]


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header and the binary data after it."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise BadParameter(
                f"{HEADER_LENGTH} must be the JSON header's length, at most the body's {len(body)} bytes; got {header_length!r}"
            )
        size = int(header_length)
        header, binary = body[:size], body[size:]
    try:
        document = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadParameter(f"the inference request is not valid JSON: {exc}") from None
    return _object(document, "the inference request"), binary


def read_images(document: dict, binary: bytes, max_bytes: int) -> list[bytes]:
    """The images of the one ``IMAGE`` input, from its binary data or its JSON ``data``."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise BadParameter("'inputs' must be a list of tensor objects")
    kserve.check_input_names([t.get("name") for t in inputs])
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadParameter(f"{kserve.IMAGE}: 'shape' must be a list of integers, got {shape!r}")
    kserve.check_image_tensor(tensor.get("datatype"), shape)
    size = _object(tensor.get("parameters"), f"{kserve.IMAGE}: 'parameters'").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadParameter(f"{kserve.IMAGE}: binary_data_size must be a non-negative integer, got {size!r}")
        if "data" in tensor:
            raise BadParameter(f"{kserve.IMAGE} has both 'data' and binary_data_size")
        if size != len(binary):
            raise BadParameter(f"{kserve.IMAGE}: binary_data_size is {size} but {len(binary)} bytes follow the JSON header")
        elements = kserve.split_bytes_tensor(binary)
    else:
        if binary:
            raise BadParameter(f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in tensor:
            raise BadParameter(f"{kserve.IMAGE} has neither 'data' nor parameters.binary_data_size")
        data = _flat(tensor["data"])
        if not all(isinstance(e, str) for e in data):
            raise BadParameter(f"{kserve.IMAGE}: BYTES 'data' elements must be strings")
        elements = [e.encode() for e in data]
    return kserve.images_of(shape, elements, max_bytes)


def read_outputs(document: dict, binary_default: bool) -> tuple[list[str], dict[str, bool]]:
    """The outputs asked for, in order, and whether each comes back as binary data."""
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadParameter("'outputs' must be a list of objects")
    names, binary = [], {}
    for output in outputs:
        name = output.get("name")
        if not isinstance(name, str):
            raise BadParameter(f"an output needs a 'name', got {output!r}")
        parameters = _object(output.get("parameters"), f"output {name}: 'parameters'")
        unknown = sorted(set(parameters) - OUTPUT_PARAMETERS)
        if unknown:
            raise BadParameter(f"output {name}: unsupported parameter(s) {unknown}; only binary_data is")
        wanted = parameters.get("binary_data", binary_default)
        if not isinstance(wanted, bool):
            raise BadParameter(f"output {name}: binary_data must be true or false")
        names.append(name)
        binary[name] = wanted
    return names, binary


def read_request(body: bytes, header_length: str | None, max_bytes: int) -> tuple[kserve.InferCall, dict, dict[str, bool], bool]:
    """The body -> (the call, the request document, binary flag per named output, the default flag)."""
    document, binary = split_body(body, header_length)
    parameters = dict(_object(document.get("parameters"), "'parameters'"))
    binary_default = parameters.pop("binary_data_output", False)  # tritonclient's, when it names no output
    if not isinstance(binary_default, bool):
        raise BadParameter("binary_data_output must be true or false")
    if "id" in document and not isinstance(document["id"], str):
        raise BadParameter("'id' must be a string")
    images = read_images(document, binary, max_bytes)
    names, binary_outputs = read_outputs(document, binary_default)
    options = {name: kserve.option_text(name, value) for name, value in parameters.items()}
    return kserve.InferCall(images, options, names), document, binary_outputs, binary_default


def infer_response(
    pipeline: Pipeline, document: dict, tensors: list[kserve.OutputTensor], binary: dict[str, bool], binary_default: bool
) -> Response:
    answer: dict[str, Any] = {"model_name": pipeline.config.name, "model_version": str(pipeline.entry.version)}
    if "id" in document:
        answer["id"] = document["id"]
    outputs, chunks = [], []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary.get(tensor.name, binary_default):
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor.data()
        outputs.append(entry)
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(chunks), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})


async def infer(request: Request, name: str, version: str) -> Response:
    async def handle(obs: Observation) -> Response:
        manager = manager_of(request)
        settings = manager.settings
        pipeline = kserve.pipeline_for(manager, name, version)
        obs.model = pipeline.config.name
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the request uncompressed")
        # The body by the server's default deadline; timeout_ms (inside it) holds from then on.
        body_deadline = obs.deadline(None, settings.request_timeout_s)
        body = await read_limited(request, settings.max_body_bytes + kserve.ENVELOPE_BYTES, body_deadline)
        call, document, binary, binary_default = read_request(body, request.headers.get(HEADER_LENGTH), settings.max_body_bytes)
        tensors = await run_unless_disconnected(request, kserve.infer(obs, manager, pipeline, call))
        if tensors is None:
            log.info("v2 infer: client went away; request dropped")
            return Response(status_code=CLIENT_CLOSED)
        return infer_response(pipeline, document, tensors, binary, binary_default)

    return await observed(request, "v2_infer", name, handle, respond=v2_service_error_response)


@router.post("/models/{name}/infer", summary="KServe v2 inference", openapi_extra=INFER_BODY)
async def model_infer(name: str, request: Request) -> Response:
    return await infer(request, name, "")


@router.post("/models/{name}/versions/{version}/infer", summary="KServe v2 inference (one version)", openapi_extra=INFER_BODY)
async def model_version_infer(name: str, version: str, request: Request) -> Response:
    return await infer(request, name, version)


# -- health and metadata ---------------------------------------------------------------------------
@router.get("", summary="KServe v2 server metadata")
async def server_metadata() -> dict:
    return kserve.server_metadata(EXTENSIONS)


@router.get("/health/live", summary="KServe v2 liveness: 200 while the process answers")
async def server_live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="KServe v2 readiness: 200 when /readyz is, else 400 (the v2 spec's 4xx)")
async def server_ready(request: Request) -> Response:
    manager = manager_of(request)
    if kserve.server_ready(manager):
        return Response(status_code=200)
    error = ModelNotReady("models are loading" if not manager.ready else "no model is ready")
    return v2_error_response(400, error.code, error.message)


def ready(request: Request, name: str, version: str) -> Response:
    """200 when the model (version) is ready; 404 when the repository has no such model, else 400."""
    manager = manager_of(request)
    if kserve.model_ready(manager, name, version):
        return Response(status_code=200)
    status = manager.models.get(name)
    if status is None:
        return v2_service_error_response(ModelNotFound(f"unknown model {name!r}; available: {sorted(manager.models)}"))
    if version and version != str(status.entry.version):
        return v2_service_error_response(ModelNotFound(f"model {name} has no version {version}; it serves {status.entry.version}"))
    error = ModelNotReady(f"model {name} is {status.state.value}" + (f": {status.reason}" if status.reason else ""))
    return v2_error_response(400, error.code, error.message)


@router.get("/models/{name}/ready", summary="KServe v2 model readiness")
async def model_ready(name: str, request: Request) -> Response:
    return ready(request, name, "")


@router.get("/models/{name}/versions/{version}/ready", summary="KServe v2 model version readiness")
async def model_version_ready(name: str, version: str, request: Request) -> Response:
    return ready(request, name, version)


def metadata(request: Request, name: str, version: str) -> Response:
    try:
        return JSONResponse(kserve.model_metadata(kserve.pipeline_for(manager_of(request), name, version)))
    except ServiceError as exc:
        return v2_service_error_response(exc)


@router.get("/models/{name}", summary="KServe v2 model metadata")
async def model_metadata(name: str, request: Request) -> Response:
    return metadata(request, name, "")


@router.get("/models/{name}/versions/{version}", summary="KServe v2 model version metadata")
async def model_version_metadata(name: str, version: str, request: Request) -> Response:
    return metadata(request, name, version)
