"""The ModelInfer tensor contract (docs/grpc.md): KServe v2 tensors <-> images, options, answers.

BYTES tensors travel the way Triton sends them: one ``raw_*_contents`` entry per tensor in
which every element is prefixed by its length as a 4-byte little-endian unsigned integer.
"""

from __future__ import annotations

import struct

from segserve.errors import BadParameter, PayloadTooLarge
from segserve.pipelines.options import parse_number
from segserve.transport.grpc import inference_pb2 as pb
from segserve.transport.observe import MAX_TIMEOUT_MS

IMAGE = "IMAGE"
MASKS_JSON = "MASKS_JSON"
LABELS = "LABELS"
OUTPUTS = (MASKS_JSON, LABELS)
_LENGTH = struct.Struct("<I")


def split_bytes_tensor(raw: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise BadParameter(f"{IMAGE}: truncated BYTES element length at offset {offset}")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise BadParameter(f"{IMAGE}: BYTES element of {size} bytes runs past the end of the tensor")
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def join_bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def input_images(request: pb.ModelInferRequest, max_bytes: int) -> list[bytes]:
    """The encoded images of the one ``IMAGE`` input: BYTES, shape [N]."""
    if [t.name for t in request.inputs] != [IMAGE]:
        raise BadParameter(f"expected exactly one input {IMAGE!r}, got {[t.name for t in request.inputs]}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise BadParameter(f"{IMAGE} must be BYTES (encoded JPEG/PNG/WebP), got {tensor.datatype}")
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise BadParameter(f"{IMAGE} must have shape [N] with N >= 1, got {list(tensor.shape)}")
    if len(request.raw_input_contents) > 1:
        raise BadParameter(f"{len(request.raw_input_contents)} raw_input_contents for one input")
    if request.raw_input_contents:
        images = split_bytes_tensor(request.raw_input_contents[0])
    else:
        images = list(tensor.contents.bytes_contents)
    if len(images) != tensor.shape[0]:
        raise BadParameter(f"{IMAGE} has shape {list(tensor.shape)} but holds {len(images)} element(s)")
    for i, image in enumerate(images):
        if len(image) > max_bytes:
            raise PayloadTooLarge(f"{IMAGE}[{i}] is {len(image)} bytes; the limit is {max_bytes}")
    return images


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    """Output names in request order, without repeats; MASKS_JSON alone when none is named."""
    names = list(dict.fromkeys(o.name for o in request.outputs)) or [MASKS_JSON]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise BadParameter(f"unknown output(s) {unknown}; the outputs are {list(OUTPUTS)}")
    return names


def parameter_text(name: str, parameter: pb.InferParameter) -> str:
    """An InferParameter as the text an HTTP query parameter would carry, so one parser
    (Pipeline.parse_options) validates both transports."""
    kind = parameter.WhichOneof("parameter_choice")
    if kind is None:
        raise BadParameter(f"parameter {name!r} has no value")
    value = getattr(parameter, kind)
    if kind == "bool_param":
        return "true" if value else "false"
    return str(value)


def request_options(request: pb.ModelInferRequest) -> dict[str, str]:
    return {name: parameter_text(name, p) for name, p in request.parameters.items()}


def timeout_ms_of(options: dict[str, str]) -> int | None:
    """The ``timeout_ms`` parameter, within the bound HTTP's query validation gives it too."""
    return parse_number(options, "timeout_ms", int, 1, MAX_TIMEOUT_MS, None)


def check_format(options: dict[str, str]) -> None:
    """Only JSON answers travel in MASKS_JSON; the label map has its own output tensor."""
    fmt = options.get("format", "json")
    if fmt != "json":
        raise BadParameter(f"format must be json over gRPC (got {fmt!r}); request the {LABELS} output for the label map")
