"""KServe v2 over HTTP (/v2/...): the real tritonclient.http client against a real `segserve
serve` process (the random-weights LRASPP and the bundled Mask R-CNN), and the raw protocol
(binary tensor data extension, error bodies, versions paths) through httpx on the in-process app.

tritonclient.http may share the test process with segserve: it brings no protobuf messages,
and the /v2 routes import nothing of segserve.transport.grpc.
"""

from __future__ import annotations

import io
import json
import struct
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from segserve import errors
from segserve.transport.http.errors import v2_service_error_response
from segserve_models.synthetic import make_scene
from tests.conftest import INSTANCE_SPLIT, SEMANTIC, make_image
from tests.kserve_clients import assert_masks_cover_the_image, batch_totals, post_segment, status_of, without_timing
from tests.servers import ServerProcess, app_server

# pycocotools 2.0.11 under numpy 2 warns on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def v2_server(semantic_repo, instance_repo, tmp_path_factory):
    """One process for the tritonclient.http tests: both models linked into one repository."""
    repo = tmp_path_factory.mktemp("v2_repo")
    (repo / SEMANTIC).symlink_to(semantic_repo / SEMANTIC)
    (repo / INSTANCE_SPLIT).symlink_to(instance_repo / INSTANCE_SPLIT)
    with ServerProcess(repo, tmp_path_factory.mktemp("logs") / "v2.log") as s:
        yield s


@pytest.fixture
def client(v2_server):
    with triton.InferenceServerClient(v2_server.url.removeprefix("http://"), network_timeout=120) as c:
        yield c


def image_input(*images: bytes, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=binary)
    return tensor


def infer(client, *images: bytes, outputs=("MASKS_JSON",), binary=True, model=SEMANTIC, **parameters) -> triton.InferResult:
    requested = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs] if outputs else None
    return client.infer(model, [image_input(*images)], outputs=requested, parameters=parameters or None)


def masks_json(result: triton.InferResult) -> list[bytes]:
    """MASKS_JSON elements as bytes, whether they came as binary data (bytes) or JSON (str)."""
    return [e.encode() if isinstance(e, str) else e for e in result.as_numpy("MASKS_JSON")]


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# -- tritonclient.http against a real process ------------------------------------------------------
def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(SEMANTIC) and client.is_model_ready(SEMANTIC, "1") and client.is_model_ready(INSTANCE_SPLIT)
    assert not client.is_model_ready("nope") and not client.is_model_ready(SEMANTIC, "7")
    server = client.get_server_metadata()
    assert server["name"] == "segserve" and server["version"] and server["extensions"] == ["binary_tensor_data"]
    for meta in (client.get_model_metadata(SEMANTIC), client.get_model_metadata(SEMANTIC, "1")):
        assert meta == {
            "name": SEMANTIC, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "MASKS_JSON", "datatype": "BYTES", "shape": [-1]},
                        {"name": "LABELS", "datatype": "UINT8", "shape": [-1, -1, -1]}],
        }
    instance = client.get_model_metadata(INSTANCE_SPLIT)
    assert [t["name"] for t in instance["outputs"]] == ["MASKS_JSON"]  # no label map
    assert status_of(lambda: client.get_model_metadata("nope")) == "404"
    assert status_of(lambda: client.get_model_metadata(SEMANTIC, "7")) == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_semantic_infer_answers_the_segment_json_and_the_png_label_map(client, v2_server, binary):
    h, w = 90, 170
    data = make_image(h, w, seed=3)
    result = infer(client, data, outputs=("LABELS", "MASKS_JSON"), binary=binary)
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == (SEMANTIC, "1")
    assert [o["name"] for o in response["outputs"]] == ["LABELS", "MASKS_JSON"]  # the order asked
    assert all(("binary_data_size" in o.get("parameters", {})) == binary for o in response["outputs"])
    (answer,) = masks_json(result)
    assert without_timing(answer) == without_timing(post_segment(v2_server.url, data).content)
    body = json.loads(answer)
    assert (body["width"], body["height"]) == (w, h) and body["timing_ms"]["compute"] > 0
    assert_masks_cover_the_image(body, h, w)
    labels = result.as_numpy("LABELS")
    assert labels.dtype == np.uint8 and labels.shape == (1, h, w)
    png = post_segment(v2_server.url, data, format="png").content
    assert (labels[0] == np.asarray(Image.open(io.BytesIO(png)))).all()


def test_no_outputs_named_means_masks_json_in_binary(client):
    """tritonclient then sets binary_data_output; several images each get an answer, in order."""
    sizes = [(40, 60), (75, 33), (128, 128)]
    result = infer(client, *(make_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)), outputs=None)
    (output,) = result.get_response()["outputs"]
    assert output["name"] == "MASKS_JSON" and output["shape"] == [3] and output["parameters"]["binary_data_size"] > 0
    assert [(a["height"], a["width"]) for a in map(json.loads, masks_json(result))] == sizes


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_instance_model_gives_the_segment_answer(client, v2_server, binary):
    data = encode_png(make_scene(3, 320, 416).image)
    http = post_segment(v2_server.url, data, "image/png", model=INSTANCE_SPLIT, max_instances="2").content
    (answer,) = masks_json(infer(client, data, model=INSTANCE_SPLIT, binary=binary, max_instances=2))
    assert without_timing(answer) == without_timing(http)
    assert len(json.loads(answer)["instances"]) <= 2


@pytest.mark.parametrize(
    "call,status",
    [
        (lambda c: infer(c, make_image(16, 16), model="nope"), "404"),
        (lambda c: c.infer(SEMANTIC, [image_input(make_image(16, 16))], model_version="7"), "404"),
        (lambda c: infer(c, b"\xff\xd8\xff garbage"), "400"),
        (lambda c: infer(c, b""), "400"),
        (lambda c: infer(c, make_image(16, 16), bogus=1), "400"),
        (lambda c: infer(c, make_image(16, 16), format="png"), "400"),
        (lambda c: infer(c, make_image(16, 16), timeout_ms=0), "400"),
        (lambda c: infer(c, make_image(16, 16), outputs=("SCORES",)), "400"),
        (lambda c: infer(c, make_image(16, 16), make_image(8, 8), outputs=("LABELS",)), "400"),
        (lambda c: infer(c, make_image(16, 16), model=INSTANCE_SPLIT, outputs=("LABELS",)), "400"),
        (lambda c: infer(c, make_image(16, 16), model=INSTANCE_SPLIT, score_threshold=2.0), "400"),
        (lambda c: infer(c, make_image(400, 400), timeout_ms=1), "504"),
        # more images than max_batch_size (8): one request may not take the whole queue
        (lambda c: infer(c, *[make_image(16, 16)] * 9), "400"),
    ],
    ids=["unknown-model", "unknown-version", "garbage", "empty", "unknown-parameter", "format-png", "timeout-0",
         "unknown-output", "labels-for-two-images", "labels-from-instance-model", "bad-instance-parameter", "deadline",
         "too-many-images"],
)
def test_errors_get_their_status(client, call, status):
    assert status_of(lambda: call(client)) == status
    assert client.is_server_live()


def test_error_messages_carry_the_domain_code(client):
    with pytest.raises(InferenceServerException) as info:
        infer(client, b"\xff\xd8\xff garbage")
    assert info.value.message().startswith("undecodable_input: ")


def test_v2_requests_are_counted_under_their_route(client, v2_server):
    infer(client, make_image(32, 32))
    metrics = httpx.get(f"{v2_server.url}/metrics").text
    assert f'segserve_requests_total{{model="{SEMANTIC}",route="v2_infer",status="200"}}' in metrics
    status_of(lambda: infer(client, make_image(16, 16), model="nope"))
    metrics = httpx.get(f"{v2_server.url}/metrics").text
    assert 'segserve_requests_total{model="unknown",route="v2_infer",status="404"}' in metrics


def test_concurrent_v2_and_segment_requests_share_batches(v2_server):
    batches_before, requests_before = batch_totals(v2_server.url)
    data = make_image(120, 160, seed=9)

    def v2_call(_) -> bytes:
        with triton.InferenceServerClient(v2_server.url.removeprefix("http://"), network_timeout=120) as c:
            return masks_json(infer(c, data))[0]

    with ThreadPoolExecutor(24) as pool:
        v2_answers = pool.map(v2_call, range(16))
        http_answers = pool.map(lambda _: post_segment(v2_server.url, data).content, range(8))
        answers = {without_timing(a) for a in [*v2_answers, *http_answers]}
    assert len(answers) == 1  # the same masks, whichever route and batch
    batches, requests = batch_totals(v2_server.url)
    assert requests - requests_before == 24
    assert (requests - requests_before) / (batches - batches_before) > 1  # concurrent requests were batched


# -- the raw protocol, in process ------------------------------------------------------------------
def binary_request(images: list[bytes], outputs=None, **document) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header = {
        "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images)], "parameters": {"binary_data_size": len(raw)}}],
        **({"outputs": outputs} if outputs is not None else {}),
        **document,
    }
    encoded = json.dumps(header).encode()
    return encoded + raw, {HEADER_LENGTH: str(len(encoded)), "Content-Type": "application/octet-stream"}


def split_response(r: httpx.Response) -> tuple[dict, bytes]:
    size = int(r.headers[HEADER_LENGTH])
    return json.loads(r.content[:size]), r.content[size:]


def assert_v2_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"].startswith(f"{code}: "), body
    return body["error"]


def test_binary_response_layout_id_and_versions_path(server):
    data = make_image(40, 50)
    body, headers = binary_request([data], outputs=[{"name": "LABELS", "parameters": {"binary_data": True}},
                                                    {"name": "MASKS_JSON"}], id="req-7")
    r = server.client.post(f"/v2/models/{SEMANTIC}/versions/1/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    document, binary = split_response(r)
    assert document["id"] == "req-7" and document["model_version"] == "1"
    labels, masks = document["outputs"]
    assert (labels["name"], labels["datatype"], labels["shape"]) == ("LABELS", "UINT8", [1, 40, 50])
    assert labels["parameters"]["binary_data_size"] == len(binary) == 40 * 50
    # named without binary_data, and no binary_data_output: JSON, a string per image
    assert (masks["datatype"], masks["shape"]) == ("BYTES", [1]) and "parameters" not in masks
    assert json.loads(masks["data"][0])["width"] == 50
    assert set(np.frombuffer(binary, np.uint8)) <= set(range(len(json.loads(masks["data"][0])["classes"])))


def test_json_only_response_when_nothing_is_binary(server):
    body, headers = binary_request([make_image(30, 30)], outputs=[{"name": "LABELS"}])
    r = server.client.post(f"/v2/models/{SEMANTIC}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert HEADER_LENGTH.lower() not in r.headers and r.headers["content-type"] == "application/json"
    (labels,) = r.json()["outputs"]
    assert labels["shape"] == [1, 30, 30] and len(labels["data"]) == 900 and all(isinstance(v, int) for v in labels["data"])


def test_binary_data_output_makes_every_output_binary(server):
    body, headers = binary_request([make_image(30, 30)], outputs=[{"name": "MASKS_JSON"}], parameters={"binary_data_output": True})
    document, binary = split_response(server.client.post(f"/v2/models/{SEMANTIC}/infer", content=body, headers=headers))
    (masks,) = document["outputs"]
    assert masks["parameters"]["binary_data_size"] == len(binary)
    (size,) = struct.unpack_from("<I", binary)
    assert json.loads(binary[4 : 4 + size])["height"] == 30


@pytest.mark.parametrize(
    "body,headers,status,code",
    [
        (b"{not json", {}, 400, "bad_parameter"),
        (b"[]", {}, 400, "bad_parameter"),
        (json.dumps({"inputs": [{"name": "PIXELS", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}).encode(), {}, 400, "bad_parameter"),
        (json.dumps({"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1], "data": [1]}]}).encode(), {}, 400, "bad_parameter"),
        (json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [2], "data": ["x"]}]}).encode(), {}, 400, "bad_parameter"),
        # JSON BYTES data are strings: fine for the protocol, never an image
        (json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}).encode(), {},
         400, "undecodable_input"),
        (b'{"inputs": []}xx', {HEADER_LENGTH: "99"}, 400, "bad_parameter"),
        (b'{"inputs": []}', {"Content-Encoding": "gzip"}, 400, "unsupported_media_type"),
    ],
    ids=["invalid-json", "not-an-object", "wrong-input", "wrong-datatype", "shape-mismatch", "json-bytes-not-an-image",
         "header-length-past-the-body", "compressed"],
)
def test_malformed_requests_get_v2_errors(server, body, headers, status, code):
    assert_v2_error(server.client.post(f"/v2/models/{SEMANTIC}/infer", content=body, headers=headers), status, code)


def test_binary_sizes_must_add_up(server):
    body, headers = binary_request([make_image(16, 16)])
    assert_v2_error(server.client.post(f"/v2/models/{SEMANTIC}/infer", content=body + b"extra", headers=headers), 400, "bad_parameter")
    raw = struct.pack("<I", 100) + b"short"
    header = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}]})
    r = server.client.post(f"/v2/models/{SEMANTIC}/infer", content=header.encode() + raw, headers={HEADER_LENGTH: str(len(header))})
    assert "runs past the end" in assert_v2_error(r, 400, "bad_parameter")
    body, headers = binary_request([make_image(16, 16)], outputs=[{"name": "MASKS_JSON", "parameters": {"classification": 3}}])
    assert "classification" in assert_v2_error(server.client.post(f"/v2/models/{SEMANTIC}/infer", content=body, headers=headers),
                                               400, "bad_parameter")


def test_body_over_the_limit_is_413(server):
    limit = server.settings.max_body_bytes
    body, headers = binary_request([b"\0" * (limit + 1)])
    assert_v2_error(server.client.post(f"/v2/models/{SEMANTIC}/infer", content=body, headers=headers), 413, "payload_too_large")


def test_health_metadata_and_unknown_paths(server):
    assert server.client.get("/v2/health/live").status_code == 200
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.client.get(f"/v2/models/{SEMANTIC}/ready").status_code == 200
    assert server.client.get(f"/v2/models/{SEMANTIC}/versions/1/ready").status_code == 200
    assert_v2_error(server.client.get(f"/v2/models/{SEMANTIC}/versions/2/ready"), 404, "model_not_found")
    assert_v2_error(server.client.get("/v2/models/nope/ready"), 404, "model_not_found")
    assert_v2_error(server.client.get("/v2/models/nope"), 404, "model_not_found")
    assert server.client.get(f"/v2/models/{SEMANTIC}/versions/1").json()["versions"] == ["1"]
    assert server.client.get("/v2").json()["name"] == "segserve"
    # what segserve does not serve (model config, statistics, repository) answers in v2's error form
    assert_v2_error(server.client.get(f"/v2/models/{SEMANTIC}/config"), 404, "not_found")
    assert_v2_error(server.client.get(f"/v2/models/{SEMANTIC}/infer"), 405, "method_not_allowed")
    # segserve's own routes keep their {"error": {"code", "message"}}
    assert server.client.get("/v1/models/nope").json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "error,status",
    [(errors.UndecodableInput("x"), 400), (errors.TooManyPixels("x"), 400), (errors.UnsupportedMediaType("x"), 400),
     (errors.PayloadTooLarge("x"), 413), (errors.ModelNotFound("x"), 404), (errors.QueueFull("x"), 503),
     (errors.ModelNotReady("x"), 503), (errors.DeadlineExceeded("x"), 504), (errors.InternalError("x"), 500)],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_domain_errors_map_to_v2_statuses(error, status):
    response = v2_service_error_response(error)
    assert response.status_code == status
    assert json.loads(response.body) == {"error": f"{error.code}: x"}
    assert ("retry-after" in response.headers) == (status == 503)


def test_a_model_that_did_not_load_is_not_ready_and_answers_503(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("name: broken\nclasses: [a]\n")  # no version folder
    with app_server(tmp_path) as s:
        assert_v2_error(s.client.get("/v2/health/ready"), 400, "model_not_ready")  # the spec's 4xx: false
        assert s.client.get("/v2/health/live").status_code == 200
        assert "UNAVAILABLE" in assert_v2_error(s.client.get("/v2/models/broken/ready"), 400, "model_not_ready")
        r = s.client.get("/v2/models/broken")
        assert_v2_error(r, 503, "model_not_ready")
        assert int(r.headers["retry-after"]) >= 1
        body, headers = binary_request([make_image(16, 16)])
        r = s.client.post("/v2/models/broken/infer", content=body, headers=headers)
        assert_v2_error(r, 503, "model_not_ready")
        assert int(r.headers["retry-after"]) >= 1
