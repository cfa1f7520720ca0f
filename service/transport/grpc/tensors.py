"""The protobuf side of ModelInfer (docs/grpc.md): a ``ModelInferRequest`` -> the transport-neutral
``InferCall`` of segserve.transport.kserve, whose tensor contract HTTP's /v2 routes share.

Image bytes come in ``raw_input_contents`` (what tritonclient sends: one entry per tensor,
every element length-prefixed) or in ``contents.bytes_contents``.
"""

from __future__ import annotations

from segserve.errors import BadParameter
from segserve.transport import kserve
from segserve.transport.grpc import inference_pb2 as pb


def input_images(request: pb.ModelInferRequest, max_bytes: int) -> list[bytes]:
    """The encoded images of the one ``IMAGE`` input: BYTES, shape [N]."""
    kserve.check_input_names([t.name for t in request.inputs])
    tensor = request.inputs[0]
    kserve.check_image_tensor(tensor.datatype, tensor.shape)
    if len(request.raw_input_contents) > 1:
        raise BadParameter(f"{len(request.raw_input_contents)} raw_input_contents for one input")
    if request.raw_input_contents:
        elements = kserve.split_bytes_tensor(request.raw_input_contents[0])
    else:
        elements = list(tensor.contents.bytes_contents)
    return kserve.images_of(tensor.shape, elements, max_bytes)


def parameter_text(name: str, parameter: pb.InferParameter) -> str:
    """An InferParameter as the text an HTTP query parameter would carry."""
    kind = parameter.WhichOneof("parameter_choice")
    if kind is None:
        raise BadParameter(f"parameter {name!r} has no value")
    return kserve.option_text(name, getattr(parameter, kind))


def infer_call(request: pb.ModelInferRequest, max_bytes: int) -> kserve.InferCall:
    options = {name: parameter_text(name, p) for name, p in request.parameters.items()}
    return kserve.InferCall(input_images(request, max_bytes), options, [o.name for o in request.outputs])


def infer_response(request: pb.ModelInferRequest, pipeline, outputs: list[kserve.OutputTensor]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=pipeline.config.name, model_version=str(pipeline.entry.version), id=request.id)
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.raw())
    return response
