"""The KServe v2 gRPC transport, spoken to by the real tritonclient.grpc client, against a real
`segserve serve` (HTTP and gRPC in one process) serving a real exported ONNX model and the
bundled Mask R-CNN.

Real process, and why: every test here. Nothing from segserve.transport.grpc may be imported
into the test process (so no in-process server with gRPC either): its generated `inference.*`
messages would clash with tritonclient's identically named ones in the descriptor pool.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from segserve_models.synthetic import make_scene
from tests.conftest import INSTANCE_SPLIT, REFINE_MODEL, SEMANTIC, make_image
from tests.kserve_clients import assert_masks_cover_the_image, batch_totals, post_segment, status_of, without_timing
from tests.servers import ServerProcess

# pycocotools 2.0.11 under numpy 2 warns on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def grpc_server(semantic_repo, instance_repo, refine_repo, tmp_path_factory):
    """One process for every gRPC test: the random-weights LRASPP, the bundled Mask R-CNN
    (its split path) and the bundled LRASPP with probabilities (refine=crf), linked into one repository."""
    repo = tmp_path_factory.mktemp("grpc_repo")
    (repo / SEMANTIC).symlink_to(semantic_repo / SEMANTIC)
    (repo / INSTANCE_SPLIT).symlink_to(instance_repo / INSTANCE_SPLIT)
    (repo / REFINE_MODEL).symlink_to(refine_repo / REFINE_MODEL)
    with ServerProcess(repo, tmp_path_factory.mktemp("logs") / "grpc.log", grpc=True) as s:
        yield s


@pytest.fixture
def client(grpc_server):
    with triton.InferenceServerClient(grpc_server.grpc_url) as c:
        yield c


def image_input(*images: bytes) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def infer(client, *images: bytes, outputs=("MASKS_JSON",), model=SEMANTIC, **parameters) -> triton.InferResult:
    requested = [triton.InferRequestedOutput(name) for name in outputs]
    return client.infer(model, [image_input(*images)], outputs=requested, parameters=parameters or None)


def masks_json(result: triton.InferResult) -> list[bytes]:
    return list(result.as_numpy("MASKS_JSON"))


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(SEMANTIC) and client.is_model_ready(SEMANTIC, "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready(SEMANTIC, "7")
    server = client.get_server_metadata()
    assert server.name == "segserve" and server.version and list(server.extensions) == []
    meta = client.get_model_metadata(SEMANTIC)
    assert (meta.name, list(meta.versions), meta.platform) == (SEMANTIC, ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("IMAGE", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("MASKS_JSON", "BYTES", [-1]), ("LABELS", "UINT8", [-1, -1, -1])]


def test_infer_answers_the_http_json_with_rle_masks_at_image_size(client, grpc_server):
    h, w = 120, 160
    data = make_image(h, w, seed=5)
    result = infer(client, data)
    assert result.get_response().model_name == SEMANTIC and result.get_response().model_version == "1"
    (answer,) = masks_json(result)
    assert without_timing(answer) == without_timing(post_segment(grpc_server.url, data).content)
    body = json.loads(answer)
    assert (body["width"], body["height"]) == (w, h) and body["timing_ms"]["compute"] > 0
    assert_masks_cover_the_image(body, h, w)


def test_labels_output_equals_the_http_png_label_map(client, grpc_server):
    data = make_image(90, 170, seed=3)
    result = infer(client, data, outputs=("LABELS", "MASKS_JSON"))
    labels = result.as_numpy("LABELS")
    assert labels.dtype == np.uint8 and labels.shape == (1, 90, 170)
    png = post_segment(grpc_server.url, data, format="png").content
    assert (labels[0] == np.asarray(Image.open(io.BytesIO(png)))).all()
    assert json.loads(masks_json(result)[0])["width"] == 170


def test_several_images_in_one_request_each_get_an_answer(client):
    sizes = [(40, 60), (75, 33), (128, 128)]
    answers = [json.loads(a) for a in masks_json(infer(client, *(make_image(h, w, seed=i) for i, (h, w) in enumerate(sizes))))]
    assert [(a["height"], a["width"]) for a in answers] == sizes


def test_images_may_come_in_bytes_contents_and_the_request_id_is_echoed(grpc_server):
    """tritonclient always sends raw_input_contents; other KServe clients use typed contents."""
    data = make_image(50, 70)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1], contents=service_pb2.InferTensorContents(bytes_contents=[data])
    )
    with grpc.insecure_channel(grpc_server.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            service_pb2.ModelInferRequest(model_name=SEMANTIC, id="req-7", inputs=[tensor]), timeout=60
        )
    assert response.id == "req-7"
    (answer,) = masks_json(triton.InferResult(response))
    assert (json.loads(answer)["width"], json.loads(answer)["height"]) == (70, 50)


def test_refine_crf_parameter_answers_the_http_refined_masks(client, grpc_server):
    scene = make_scene(1_000_000_001)
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="PNG")
    data = buf.getvalue()
    (refined,) = masks_json(infer(client, data, model=REFINE_MODEL, refine="crf"))
    (plain,) = masks_json(infer(client, data, model=REFINE_MODEL))
    http = post_segment(grpc_server.url, data, "image/png", model=REFINE_MODEL, refine="crf").content
    assert without_timing(refined) == without_timing(http)
    assert json.loads(without_timing(refined) + b"}")["segments"] != json.loads(without_timing(plain) + b"}")["segments"]


@pytest.mark.parametrize("model,value,message", [
    (SEMANTIC, "crf", "cannot be refined"),  # labels only (argmax in the graph)
    (REFINE_MODEL, "bogus", "refine must be one of"),
])
def test_bad_refine_is_invalid_argument_with_the_reason(client, model, value, message):
    with pytest.raises(triton.InferenceServerException) as info:
        infer(client, make_image(16, 16), model=model, refine=value)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and message in info.value.message()


@pytest.mark.parametrize(
    "call,status",
    [
        (lambda c: infer(c, make_image(16, 16), model="nope"), grpc.StatusCode.NOT_FOUND),
        (lambda c: infer(c, b"\xff\xd8\xff garbage"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: infer(c, b""), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: infer(c, make_image(16, 16), bogus=1), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: infer(c, make_image(16, 16), format="png"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: infer(c, make_image(16, 16), timeout_ms=0), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: infer(c, make_image(16, 16), outputs=("SCORES",)), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: infer(c, make_image(16, 16), make_image(8, 8), outputs=("LABELS",)), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: infer(c, make_image(400, 400), timeout_ms=1), grpc.StatusCode.DEADLINE_EXCEEDED),
        (lambda c: infer(c, b"\0" * (21 * 1024 * 1024)), grpc.StatusCode.RESOURCE_EXHAUSTED),  # over max_body_bytes (20 MiB)
        # more images than max_batch_size (8): one request may not take the whole queue
        (lambda c: infer(c, *[make_image(16, 16)] * 9), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown-model", "garbage", "empty", "unknown-parameter", "format-png", "timeout-0", "unknown-output",
         "labels-for-two-images", "deadline", "too-large", "too-many-images"],
)
def test_errors_get_their_grpc_status(client, call, status):
    assert status_of(lambda: call(client)) == str(status)
    assert client.is_server_live()


def test_concurrent_grpc_and_http_requests_all_succeed_in_shared_batches(grpc_server):
    batches_before, requests_before = batch_totals(grpc_server.url)
    data = make_image(120, 160, seed=9)

    def grpc_call(_) -> bytes:
        with triton.InferenceServerClient(grpc_server.grpc_url) as c:
            return masks_json(infer(c, data))[0]

    def http_call(_) -> bytes:
        return post_segment(grpc_server.url, data).content

    with ThreadPoolExecutor(24) as pool:
        grpc_answers = pool.map(grpc_call, range(16))
        http_answers = pool.map(http_call, range(8))
        answers = {without_timing(a) for a in [*grpc_answers, *http_answers]}
    assert len(answers) == 1  # every one of the 24 got the same masks, whichever transport and batch
    batches, requests = batch_totals(grpc_server.url)
    assert requests - requests_before == 24
    assert (requests - requests_before) / (batches - batches_before) > 1  # concurrent requests were batched
    metrics = httpx.get(f"{grpc_server.url}/metrics").text
    assert f'segserve_requests_total{{model="{SEMANTIC}",route="grpc",status="OK"}}' in metrics


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_instance_model_gives_the_http_answer_and_validates_the_same_parameters(client, grpc_server):
    data = encode_png(make_scene(3, 320, 416).image)
    http = post_segment(grpc_server.url, data, "image/png", model=INSTANCE_SPLIT, max_instances="2").content
    (answer,) = masks_json(infer(client, data, model=INSTANCE_SPLIT, max_instances=2))
    assert without_timing(answer) == without_timing(http)
    assert status_of(lambda: infer(client, data, model=INSTANCE_SPLIT, score_threshold=2.0)) == "StatusCode.INVALID_ARGUMENT"
