"""Dense-CRF refinement (``?refine=crf``): the probabilities export, the request option and the
per-model default, on real engines (the bundled LRASPP exported with ``--probabilities``, and the
labels-only random-weights LRASPP the other tests serve). gRPC: tests/test_grpc.py."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segserve.contract.artifacts import CONFIG_FILE, EXPORT_RECORD, ONNX_ARTIFACT, WEIGHTS_ARTIFACT
from segserve.contract.model_config import load_config
from segserve.contract.refine import PROBABILITIES_OUTPUT
from segserve_models.synthetic import make_scene
from tests.conftest import REFINE_MODEL, SEMANTIC
from tests.servers import app_server

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REFINE_DEFAULT = "shapes_crf_default"  # parameters.refine: crf
LABELS_DEFAULT_CRF = "labels_default_crf"  # labels only, parameters.refine: crf: cannot load
SCENE_SEEDS = (1_000_000_000, 1_000_000_001, 1_000_000_002)  # held-out scenes (never trained on)


def _copy(src: Path, dst: Path, **parameters) -> None:
    shutil.copytree(src, dst)
    config = load_config(dst)
    config.model_copy(update={"name": dst.name, "parameters": {**config.parameters, **parameters}}).dump(dst / CONFIG_FILE)


@pytest.fixture(scope="module")
def refine_server(refine_repo, semantic_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("refine_serve")
    (repo / REFINE_MODEL).symlink_to(refine_repo / REFINE_MODEL)
    (repo / SEMANTIC).symlink_to(semantic_repo / SEMANTIC)
    _copy(refine_repo / REFINE_MODEL, repo / REFINE_DEFAULT, refine="crf")
    _copy(semantic_repo / SEMANTIC, repo / LABELS_DEFAULT_CRF, refine="crf")
    with app_server(repo) as s:
        yield s


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _segment(server, data: bytes, **params):
    return server.client.post("/segment", content=data, params=params, headers={"Content-Type": "image/png"})


def _label_map(body: dict) -> np.ndarray:
    labels = np.zeros((body["height"], body["width"]), np.int32)
    for segment in body["segments"]:
        rle = segment["mask"]
        labels[mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)] = segment["class_id"]
    return labels


# -- the export -------------------------------------------------------------------------------
def test_probabilities_export_adds_the_uint8_softmax_and_its_parity_holds(refine_repo):
    model_dir = refine_repo / REFINE_MODEL
    config = load_config(model_dir)
    assert (config.output.kind, config.output.name, config.output.probabilities) == ("labels", "labels", PROBABILITIES_OUTPUT)
    record = json.loads((model_dir / "1" / EXPORT_RECORD).read_text())
    parity = record["probabilities_parity"]
    assert parity["max_abs_step_diff"] <= 1 and parity["label_agreement"] >= 0.999 and parity["dtype"] == "uint8"

    session = ort.InferenceSession(str(model_dir / "1" / ONNX_ARTIFACT), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["labels", PROBABILITIES_OUTPUT]
    scene = make_scene(SCENE_SEEDS[0], 128, 128)
    labels, probs = session.run(None, {"images": np.ascontiguousarray(scene.image.transpose(2, 0, 1))[None]})
    assert labels.dtype == probs.dtype == np.uint8 and probs.shape == (1, len(config.classes), 128, 128)
    total = probs.astype(np.int32).sum(axis=1)
    assert np.abs(total - 255).max() <= len(config.classes)  # each class rounded by at most half a step
    assert (probs.argmax(axis=1) == labels).mean() >= 0.99  # ties after rounding aside

    # the torch backend builds the same two outputs from weights.pt
    from segserve.engine import create_engine

    assert (model_dir / "1" / WEIGHTS_ARTIFACT).is_file()
    torch_out = create_engine(config, model_dir / "1", "torch").infer({"images": np.ascontiguousarray(scene.image.transpose(2, 0, 1))[None]})
    assert torch_out[PROBABILITIES_OUTPUT].dtype == np.uint8
    assert np.abs(torch_out[PROBABILITIES_OUTPUT].astype(np.int16) - probs).max() <= 1


def test_the_default_export_stays_labels_only(semantic_repo):
    config = load_config(semantic_repo / SEMANTIC)
    assert config.output.probabilities is None and not config.output.has_scores
    session = ort.InferenceSession(str(semantic_repo / SEMANTIC / "1" / ONNX_ARTIFACT), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["labels"]


# -- the request option -----------------------------------------------------------------------
def test_refine_crf_changes_the_masks_toward_the_truth(refine_server):
    gained = []
    for seed in SCENE_SEEDS:
        scene = make_scene(seed)
        data = _png(scene.image)
        plain = _segment(refine_server, data, model=REFINE_MODEL)
        assert plain.status_code == 200, plain.text
        none = _segment(refine_server, data, model=REFINE_MODEL, refine="none")
        crf = _segment(refine_server, data, model=REFINE_MODEL, refine="crf")
        assert crf.status_code == none.status_code == 200, crf.text
        assert none.json()["segments"] == plain.json()["segments"]  # none = the engine's masks
        before, after = _label_map(plain.json()), _label_map(crf.json())
        assert after.shape == scene.labels.shape
        assert (before != after).mean() > 0.001  # the masks changed ...
        gained.append((after == scene.labels).mean() - (before == scene.labels).mean())
    assert np.mean(gained) > 0  # ... and agree better with the truth on these flat-coloured shapes


def test_refine_crf_png_is_the_refined_label_map(refine_server):
    scene = make_scene(SCENE_SEEDS[1])
    data = _png(scene.image)
    masks = _segment(refine_server, data, model=REFINE_MODEL, refine="crf").json()
    png = _segment(refine_server, data, model=REFINE_MODEL, refine="crf", format="png")
    plain_png = _segment(refine_server, data, model=REFINE_MODEL, format="png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    refined = np.asarray(Image.open(io.BytesIO(png.content)))
    assert np.array_equal(refined, _label_map(masks))
    assert not np.array_equal(refined, np.asarray(Image.open(io.BytesIO(plain_png.content))))


def test_a_labels_only_model_cannot_be_refined_400(refine_server):
    r = _segment(refine_server, _png(make_scene(SCENE_SEEDS[0]).image), model=SEMANTIC, refine="crf")
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "bad_parameter"
    assert "cannot be refined" in error["message"] and "labels only" in error["message"] and "--probabilities" in error["message"]
    assert _segment(refine_server, _png(make_scene(SCENE_SEEDS[0]).image), model=SEMANTIC, refine="none").status_code == 200


@pytest.mark.parametrize("value", ["bogus", "CRF", ""])
def test_a_bad_refine_value_is_400(refine_server, value):
    for model in (REFINE_MODEL, SEMANTIC):
        r = _segment(refine_server, _png(make_scene(SCENE_SEEDS[0], 64, 64).image), model=model, refine=value)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_parameter" and "refine" in r.json()["error"]["message"]


def test_the_model_default_refines_unless_the_request_says_none(refine_server):
    data = _png(make_scene(SCENE_SEEDS[2]).image)
    explicit = _segment(refine_server, data, model=REFINE_MODEL, refine="crf").json()["segments"]
    plain = _segment(refine_server, data, model=REFINE_MODEL).json()["segments"]
    assert _segment(refine_server, data, model=REFINE_DEFAULT).json()["segments"] == explicit
    assert _segment(refine_server, data, model=REFINE_DEFAULT, refine="none").json()["segments"] == plain


def test_a_labels_only_model_with_a_crf_default_does_not_load(refine_server):
    info = refine_server.client.get(f"/v1/models/{LABELS_DEFAULT_CRF}").json()
    assert info["state"] == "UNAVAILABLE" and "cannot be refined" in info["reason"]
    assert refine_server.client.get(f"/v1/models/{REFINE_DEFAULT}").json()["state"] == "READY"


# -- the boundary metrics the CRF benchmark reports -----------------------------------------------
def test_boundary_score_counts_edges_within_the_tolerance():
    from segserve_models.evaluation.metrics import BoundaryScore

    truth = np.zeros((40, 40), np.uint8)
    truth[10:30, 10:30] = 1
    exact, near, far = BoundaryScore(2, 3), BoundaryScore(2, 3), BoundaryScore(2, 3)
    exact.update(truth, truth)
    near.update(np.roll(truth, 2, axis=1), truth)  # 2 px off: inside the 3 px tolerance
    far.update(np.roll(truth, 6, axis=1), truth)
    assert exact.results(["bg", "fg"])["boundary_f"] == 1.0 and exact.results(["bg", "fg"])["trimap_miou"] == 1.0
    assert near.results(["bg", "fg"])["boundary_f"] == 1.0 and near.results(["bg", "fg"])["trimap_miou"] < 1.0
    assert 0 < far.results(["bg", "fg"])["boundary_f"] < 0.8
