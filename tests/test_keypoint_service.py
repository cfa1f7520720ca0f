"""Keypoint R-CNN through POST /segment (and KServe v2 over HTTP), against the real app in this
process (tests/servers.py) serving the bundled keypoint model (exported once per session,
parity-checked by the exporter): K keypoints per instance at the original resolution, the
names and skeleton in /v1/models, options validated, and keypoint AP through the server equal
to engine-direct.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from segserve.client import Client
from segserve.client.cli import save_result
from segserve.codecs.overlay import caption, draw_instances, encode_jpeg
from segserve.contract.artifacts import WEIGHTS_ARTIFACT
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import load_config
from segserve.graphs import zoo
from segserve.transport.http.schemas import KeypointsResponse, ModelInfo
from segserve_models.evaluation import datasets
from segserve_models.evaluation.predictors import EnginePredictor, HttpPredictor
from segserve_models.evaluation.run import evaluate
from segserve_models.instance.parity import compare_all, eager_keypoint_instances
from segserve_models.synthetic import make_scene
from segserve_models.synthetic.keypoints import KEYPOINT_NAMES, KEYPOINT_SKELETON, KEYPOINTS_BY_CLASS, NUM_KEYPOINTS
from segserve_models.train import held_out_seeds
from tests.conftest import KEYPOINT_MODEL as MODEL
from tests.servers import BASE_URL, app_server
from tests.test_api import assert_error, post_image
from tests.test_instance_service import jpeg, png, r_json
from tests.test_kserve_http import binary_request

# The bundled model's keypoint AP (OKS, sigma 0.05) on held-out scenes is in docs/accuracy.md; margin below.
MIN_KEYPOINT_AP50 = 0.2
EVAL_IMAGES = 6


@pytest.fixture(scope="module")
def server(keypoint_repo):
    with app_server(keypoint_repo) as s:
        yield s


def segment(server, data: bytes, content_type: str = "image/png", **params):
    return post_image(server.client, data, content_type, params={"model": MODEL, **params})


def test_models_list_the_keypoint_model_ready_with_its_names_and_skeleton(server):
    r = server.client.get("/v1/models")
    assert r.status_code == 200
    [info] = [ModelInfo.model_validate(m) for m in r.json()["models"] if m["name"] == MODEL]
    assert (info.task, info.state.value, info.architecture) == ("keypoints", "READY", "keypointrcnn_mobilenet_v3_large_fpn")
    assert info.keypoints.names == KEYPOINT_NAMES and [list(p) for p in info.keypoints.skeleton] == KEYPOINT_SKELETON
    assert info.keypoints.classes == KEYPOINTS_BY_CLASS
    assert info.classes == ["background", "rectangle", "triangle", "star"] and info.weights.source == "bundled"


def test_jpeg_photo_gives_instances_with_k_keypoints_at_the_original_size(server):
    scene = make_scene(7, 900, 1200)  # 3.5x the model's resize: the JPEG decodes at a draft scale
    r = segment(server, jpeg(scene.image), "image/jpeg", score_threshold="0.3")
    body = KeypointsResponse.model_validate(r_json(r))
    assert (body.task, body.width, body.height) == ("keypoints", 1200, 900) and body.instances
    assert [i.score for i in body.instances] == sorted((i.score for i in body.instances), reverse=True)
    for instance in body.instances:
        points = np.reshape(instance.keypoints, (-1, 3))
        assert points.shape == (NUM_KEYPOINTS, 3) and len(instance.keypoint_scores) == NUM_KEYPOINTS
        x0, y0, x1, y1 = instance.box
        assert 0 <= x0 < x1 <= 1200 and 0 <= y0 < y1 <= 900
        # heatmap maxima sit inside their box, in original-image pixels
        assert (points[:, 0] >= x0 - 1).all() and (points[:, 0] <= x1 + 1).all()
        assert (points[:, 1] >= y0 - 1).all() and (points[:, 1] <= y1 + 1).all()
        assert instance.label in ("rectangle", "triangle", "star")


@pytest.fixture(scope="module")
def detector(keypoint_repo):
    """torchvision eager on the exported weights and settings: the parity reference."""
    repo = keypoint_repo
    config = load_config(repo / MODEL)
    params = InstanceParameters.model_validate(config.parameters)
    net = zoo.build_for(config)
    net.load_state_dict(torch.load(repo / MODEL / "1" / WEIGHTS_ARTIFACT, weights_only=True))
    net.transform.min_size, net.transform.max_size = (params.min_size,), params.max_size
    return net.eval()


def test_served_keypoints_match_torchvision_eager(server, detector):
    """Batch-1 requests against eager one image at a time (see test_instance_service)."""
    images = [make_scene(seed, h, w).image for seed, (h, w) in zip(held_out_seeds(3), [(301, 517), (611, 389), (200, 230)])]
    responses = [segment(server, png(image), score_threshold="0.3") for image in images]
    assert all(r.headers["x-batch-size"] == "1" for r in responses)
    served = [r_json(r)["instances"] for r in responses]
    reference = [eager_keypoint_instances(detector, [image], 0.3)[0] for image in images]
    result = compare_all(reference, served, 0.3, 100)
    assert result.ok and result.matched > 3, result
    assert result.max_box_diff <= 1 and result.max_score_diff <= 1e-3 and result.max_keypoint_diff <= 1, result


@pytest.mark.parametrize(
    "params",
    [{"score_threshold": "2"}, {"max_instances": "0"}, {"max_instances": "many"}, {"mask_threshold": "0.5"},
     {"format": "png"}, {"iou": "0.5"}],
)
def test_bad_options_are_400(server, params):
    assert_error(segment(server, png(make_scene(1, 64, 64).image), **params), 400, "bad_parameter")


def test_request_thresholds_apply(server):
    data = png(make_scene(3, 320, 416).image)
    loose = r_json(segment(server, data, score_threshold="0.05"))["instances"]
    assert len(loose) > 1 and min(i["score"] for i in loose) >= 0.05
    assert len(r_json(segment(server, data, score_threshold="0.05", max_instances="1"))["instances"]) == 1


def test_kserve_v2_masks_json_is_the_segment_answer(server):
    data = png(make_scene(5, 240, 320).image)
    body, headers = binary_request([data], outputs=[{"name": "MASKS_JSON"}], parameters={"score_threshold": "0.3"})
    r = server.client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    (masks_json,) = r.json()["outputs"]  # named without binary_data: JSON, a string per image
    answer = json.loads(masks_json["data"][0])
    direct = r_json(segment(server, data, score_threshold="0.3"))
    assert answer["task"] == "keypoints" and answer["instances"] == direct["instances"]


def test_keypoint_ap_through_the_server_equals_engine_direct(server, keypoint_repo):
    samples = list(datasets.synthetic(EVAL_IMAGES, first_seed=datasets.HELD_OUT_SEED_BASE + 100))
    served = evaluate(HttpPredictor(BASE_URL, MODEL, client=server.client), samples)
    direct = evaluate(EnginePredictor(keypoint_repo, MODEL, "onnxruntime"), samples)
    assert served["task"] == direct["task"] == "keypoints" and served["images"] == EVAL_IMAGES
    assert served["keypoint_ap50"] >= MIN_KEYPOINT_AP50, served
    for key in ("keypoint_ap", "keypoint_ap50", "keypoint_ap75"):
        assert served[key] == pytest.approx(direct[key], abs=1e-9), (key, served, direct)


def test_video_frames_carry_keypoints_like_images(server):
    images = [make_scene(seed, 240, 320).image for seed in (11, 12, 13)]
    files = [("frame", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
    r = server.client.post("/segment/video", params={"model": MODEL, "score_threshold": "0.3"}, files=files)
    body = r_json(r)
    assert body["task"] == "keypoints" and [f["index"] for f in body["frames"]] == [0, 1, 2]
    alone = [r_json(segment(server, png(image), score_threshold="0.3"))["instances"] for image in images]
    result = compare_all(alone, [f["instances"] for f in body["frames"]], 0.3, 100)
    assert result.ok and result.matched == sum(map(len, alone)), result
    files = [("frame", ("0.png", png(images[0]), "image/png"))]
    assert_error(server.client.post("/segment/video", params={"model": MODEL, "format": "png"}, files=files), 400, "bad_parameter")


# -- pictures and the client -----------------------------------------------------------------
def test_answers_name_the_keypoints_and_overlays_draw_points_and_skeleton(server):
    """format=overlay: the image with each instance's box, caption, keypoints and skeleton --
    the very picture ``draw_instances`` makes from the JSON answer (so the client's is the same)."""
    scene = make_scene(9, 240, 320)
    data = png(scene.image)
    answer = r_json(segment(server, data, score_threshold="0.3"))
    assert answer["keypoint_names"] == KEYPOINT_NAMES and answer["skeleton"] == KEYPOINT_SKELETON
    assert answer["instances"]
    r = segment(server, data, score_threshold="0.3", format="overlay")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    drawn = answer["instances"][::-1]
    expected = draw_instances(scene.image, [None] * len(drawn), [i["box"] for i in drawn], [i["class_id"] for i in drawn],
                              [caption(i["label"], i["score"]) for i in drawn],
                              keypoints=[i["keypoints"] for i in drawn], skeleton=KEYPOINT_SKELETON)
    assert r.content == encode_jpeg(expected)
    # each instance's own keypoints are drawn (pixels there changed); the other classes' are v = 0
    for instance in answer["instances"]:
        points = np.reshape(instance["keypoints"], (-1, 3))
        own = [i for i, name in enumerate(KEYPOINT_NAMES) if name.startswith(instance["label"] + "_")]
        assert [i for i in range(NUM_KEYPOINTS) if points[i, 2] > 0] == own
    x, y = (int(v) for v in points[own[0], :2])
    assert not np.array_equal(expected[y, x], scene.image[y, x])


def test_the_client_reads_keypoints_and_draws_the_servers_overlay(server, tmp_path):
    scene = make_scene(9, 240, 320)
    data = png(scene.image)
    with Client(BASE_URL, transport=server.transport(), model=MODEL) as client:
        result = client.segment(data, score_threshold=0.3)
        assert result.task == "keypoints" and result.instances and result.keypoint_names == KEYPOINT_NAMES
        assert result.keypoints.shape == (len(result.instances), NUM_KEYPOINTS, 3)
        assert [list(p) for p in result.skeleton] == KEYPOINT_SKELETON
        with pytest.raises(ValueError, match="no mask"):
            result.label_map  # noqa: B018 - keypoint models have no masks
        assert encode_jpeg(result.overlay()) == client.overlay(data, score_threshold=0.3)
    save_result(tmp_path, "scene", result, result.raw)  # what `segserve segment` writes: no label map here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.json", "scene.overlay.jpg"]


def test_video_frames_come_as_overlays_too(server):
    images = [make_scene(seed, 120, 160).image for seed in (21, 22)]
    files = [("frame", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
    r = server.client.post("/segment/video", params={"model": MODEL, "score_threshold": "0.3", "format": "overlay"}, files=files)
    body = r_json(r)
    assert body["skeleton"] == KEYPOINT_SKELETON
    for image, frame in zip(images, body["frames"]):
        alone = segment(server, png(image), score_threshold="0.3", format="overlay").content
        assert base64.b64decode(frame["overlay"]) == alone  # the same picture as /segment draws
