"""The KServe v2 / Open Inference Protocol tensor contract, one for every transport that speaks
it (gRPC: transport/grpc/, HTTP: transport/http/v2_routes.py; docs/grpc.md, docs/kserve-http.md).

Inputs: ``IMAGE`` BYTES [N], N encoded images. Outputs: ``MASKS_JSON`` BYTES [N] (per image the
JSON document ``POST /segment`` answers) and ``LABELS`` UINT8 [1, H, W] (semantic models, one
image). Request parameters are HTTP's query parameters as text, validated by
``Pipeline.parse_options``. BYTES tensors travel serialised the way Triton sends them: every
element prefixed by its length as a 4-byte little-endian unsigned integer.

Nothing here knows protobuf or HTTP: a transport turns its message into element lists and
option values, calls ``infer`` and turns the ``OutputTensor`` list back into its message.
(It must not import segserve.transport.grpc either: see segserve/server.py.)
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from segserve import __version__
from segserve.errors import BadParameter, ModelNotFound, PayloadTooLarge
from segserve.model_manager import ModelManager
from segserve.pipelines import ImageResult, OutputFormat, Pipeline
from segserve.pipelines.base import render_json
from segserve.pipelines.options import TIMEOUT_MS
from segserve.transport.observe import Observation

IMAGE = "IMAGE"
MASKS_JSON = "MASKS_JSON"
LABELS = "LABELS"
OUTPUTS = (MASKS_JSON, LABELS)
# KServe v2 platform names, as Triton reports them, for segserve's engine backends.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch"}
# Room for the envelope around the image bytes (tensor metadata, parameters, length prefixes,
# a JSON header), so an image of exactly max_body_bytes is still accepted as over /segment.
ENVELOPE_BYTES = 64 * 1024
_LENGTH = struct.Struct("<I")


# -- BYTES elements ----------------------------------------------------------------------------
def split_bytes_tensor(raw: bytes, name: str = IMAGE) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise BadParameter(f"{name}: truncated BYTES element length at offset {offset}")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise BadParameter(f"{name}: BYTES element of {size} bytes runs past the end of the tensor")
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def join_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


# -- inputs ------------------------------------------------------------------------------------
def check_input_names(names: Sequence[str]) -> None:
    if list(names) != [IMAGE]:
        raise BadParameter(f"expected exactly one input {IMAGE!r}, got {list(names)}")


def check_image_tensor(datatype: str, shape: Sequence[int]) -> None:
    if datatype != "BYTES":
        raise BadParameter(f"{IMAGE} must be BYTES (encoded JPEG/PNG/WebP), got {datatype}")
    if len(shape) != 1 or shape[0] < 1:
        raise BadParameter(f"{IMAGE} must have shape [N] with N >= 1, got {list(shape)}")


def images_of(shape: Sequence[int], elements: list[bytes], max_bytes: int) -> list[bytes]:
    """The images of an ``IMAGE`` tensor whose elements the transport has extracted."""
    if len(elements) != shape[0]:
        raise BadParameter(f"{IMAGE} has shape {list(shape)} but holds {len(elements)} element(s)")
    for i, image in enumerate(elements):
        if len(image) > max_bytes:
            raise PayloadTooLarge(f"{IMAGE}[{i}] is {len(image)} bytes; the limit is {max_bytes}")
    return elements


# -- outputs and parameters --------------------------------------------------------------------
def requested_outputs(names: Sequence[str]) -> list[str]:
    """Output names in request order, without repeats; MASKS_JSON alone when none is named."""
    names = list(dict.fromkeys(names)) or [MASKS_JSON]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise BadParameter(f"unknown output(s) {unknown}; the outputs are {list(OUTPUTS)}")
    return names


def option_text(name: str, value: Any) -> str:
    """A request parameter's value as the text an HTTP query parameter would carry, so one
    parser (Pipeline.parse_options) validates every transport."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise BadParameter(f"parameter {name!r} must be a string, number or boolean, got {type(value).__name__}")


def timeout_ms_of(options: Mapping[str, str]) -> int | None:
    """The ``timeout_ms`` parameter, with the bounds it has on every transport."""
    return TIMEOUT_MS.parse(options)


def check_format(options: Mapping[str, str]) -> None:
    """Only JSON answers travel in MASKS_JSON; the label map has its own output tensor."""
    fmt = options.get("format", "json")
    if fmt != "json":
        raise BadParameter(f"format must be json in KServe v2 (got {fmt!r}); request the {LABELS} output for the label map")


# -- models ------------------------------------------------------------------------------------
def pipeline_for(manager: ModelManager, name: str, version: str) -> Pipeline:
    """The ready model by name (empty: the default model), as HTTP's ``?model=`` picks it; a
    version other than the one served is not found."""
    pipeline = manager.get(name or None)
    if version and version != str(pipeline.entry.version):
        raise ModelNotFound(f"model {pipeline.config.name} has no version {version}; it serves {pipeline.entry.version}")
    return pipeline


def server_metadata(extensions: Sequence[str] = ()) -> dict[str, Any]:
    return {"name": "segserve", "version": __version__, "extensions": list(extensions)}


def server_ready(manager: ModelManager) -> bool:
    """As ``/readyz``: loading done and at least one model ready."""
    return manager.ready and bool(manager.ready_models())


def model_ready(manager: ModelManager, name: str, version: str) -> bool:
    status = manager.models.get(name or manager.default_model or "")
    return status is not None and status.ready and version in ("", str(status.entry.version))


def model_metadata(pipeline: Pipeline) -> dict[str, Any]:
    """ModelMetadata as plain data: name, versions, platform, inputs, outputs."""
    outputs = [{"name": MASKS_JSON, "datatype": "BYTES", "shape": [-1]}]
    if pipeline.label_map:
        outputs.append({"name": LABELS, "datatype": "UINT8", "shape": [-1, -1, -1]})
    backend = pipeline.engine_info.backend
    return {
        "name": pipeline.config.name,
        "versions": [str(pipeline.entry.version)],
        "platform": PLATFORMS.get(backend, backend),
        "inputs": [{"name": IMAGE, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    }


# -- ModelInfer --------------------------------------------------------------------------------
@dataclass(frozen=True)
class InferCall:
    """One inference request as a transport has read it: the images of its IMAGE tensor, its
    parameters as text, the names of the outputs it asks for (none: MASKS_JSON)."""

    images: list[bytes]
    options: dict[str, str]
    outputs: list[str]


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    value: list[bytes] | np.ndarray  # BYTES: the elements; UINT8: the array

    def raw(self) -> bytes:
        """The tensor's bytes as Triton's raw contents and binary-data extension carry them."""
        if isinstance(self.value, np.ndarray):
            return self.value.tobytes()
        return join_bytes_tensor(self.value)

    def data(self) -> list:
        """The tensor as a flat JSON list: BYTES elements as strings, numbers as numbers."""
        if isinstance(self.value, np.ndarray):
            return self.value.ravel().tolist()
        return [element.decode() for element in self.value]


async def segment_all(pipeline: Pipeline, images: list[bytes], options, deadline: float) -> list[ImageResult]:
    """Submit every image at once so they can share a batch; the first failure (or the request
    being cancelled) cancels the rest, which the batcher then drops before compute."""
    tasks = [asyncio.ensure_future(pipeline.segment_image(data, options, OutputFormat.json, deadline)) for data in images]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def infer(
    obs: Observation, manager: ModelManager, pipeline: Pipeline, call: InferCall, limit_s: float | None = None
) -> list[OutputTensor]:
    """Validate, admit (cost: one per image), segment and answer one request: the outputs in
    the order asked. ``limit_s``: the transport's own deadline (gRPC's), if any."""
    settings = manager.settings
    config = pipeline.config
    options = call.options
    check_format(options)
    timeout_ms = timeout_ms_of(options)
    parsed = pipeline.parse_options(options)
    outputs = requested_outputs(call.outputs)
    images = call.images
    if len(images) > config.max_batch_size:  # one request must not take the whole queue
        raise BadParameter(f"{IMAGE} holds {len(images)} images; at most {config.max_batch_size} (max_batch_size) per request")
    if LABELS in outputs:
        if not pipeline.label_map or len(config.classes) > 256:
            raise BadParameter(f"{LABELS} (UINT8) is only answered by semantic models of at most 256 classes")
        if len(images) != 1:
            raise BadParameter(f"{LABELS} is only answered for one image; {IMAGE} holds {len(images)}")
    # The tighter of the transport's deadline and timeout_ms (or the server default).
    deadline = obs.deadline(timeout_ms, settings.request_timeout_s, limit_s)
    with pipeline.admit(cost=len(images)):
        results = await segment_all(pipeline, images, parsed, deadline)

    tensors = []
    for output in outputs:
        if output == MASKS_JSON:
            total_s = obs.elapsed()
            bodies = [render_json(pipeline, r, total_s) for r in results]
            tensors.append(OutputTensor(MASKS_JSON, "BYTES", [len(bodies)], bodies))
        else:  # the full-size map, made on demand off the event loop
            encoded = results[0].encoded
            labels = await asyncio.get_running_loop().run_in_executor(manager.codec_pool, lambda: encoded.label_map)
            labels = labels.astype(np.uint8, copy=False)
            tensors.append(OutputTensor(LABELS, "UINT8", [1, *labels.shape], labels))
    return tensors
