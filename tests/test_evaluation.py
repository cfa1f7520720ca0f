"""Accuracy through the whole stack: the bundled models served over HTTP (the real app in this
process, tests/servers.py) vs the engines alone, on held-out synthetic scenes with exact truth.

Real process: none here; the HTTP predictor needs the app, not the process.
"""

from __future__ import annotations

import numpy as np
import pytest

from segserve_models.evaluation import datasets
from segserve_models.evaluation.metrics import ConfusionMatrix, InstanceAccumulator, encode_instance_mask
from segserve_models.evaluation.predictors import EnginePredictor, HttpPredictor
from segserve_models.evaluation.run import evaluate
from segserve_models.export import export_model
from segserve_models.weights import WeightsSpec
from tests.conftest import INSTANCE_SPLIT
from tests.servers import BASE_URL, InProcessServer

SHAPES = "shapes_lraspp"
EVAL_IMAGES = 12


def test_confusion_matrix_metrics_by_hand():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 2]])
    m = ConfusionMatrix(3)
    m.update(pred, truth)
    r = m.results(["bg", "a", "b"])
    assert r["pixel_accuracy"] == pytest.approx(5 / 7)  # the 255 pixel is ignored
    assert r["mean_pixel_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)  # class b absent from the truth
    assert r["iou_per_class"] == pytest.approx({"bg": 3 / 5, "a": 2 / 4})
    assert r["mean_iou"] == pytest.approx((3 / 5 + 2 / 4) / 2)


def test_mask_ap_is_one_for_perfect_and_zero_for_wrong_classes():
    mask = np.zeros((40, 50), bool)
    mask[5:20, 10:30] = True
    rle = encode_instance_mask(mask)
    perfect, wrong = InstanceAccumulator(), InstanceAccumulator()
    perfect.add(40, 50, [(1, rle)], [(1, 0.9, rle)])
    wrong.add(40, 50, [(1, rle)], [(2, 0.9, rle)])
    assert perfect.results(["bg", "a", "b"])["mask_ap"] == pytest.approx(1.0)
    assert wrong.results(["bg", "a", "b"])["mask_ap"] == 0.0


@pytest.fixture(scope="module")
def shapes_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("shapes")
    export_model("lraspp_mobilenet_v3_large", repo, WeightsSpec.parse(f"bundled:{SHAPES}"), name=SHAPES,
                 input_size=(256, 256), progress=False)
    return repo


@pytest.fixture(scope="module")
def shapes_server(shapes_repo):
    with InProcessServer(shapes_repo) as server:
        yield server


def predictor(server, model: str) -> HttpPredictor:
    return HttpPredictor(BASE_URL, model, client=server.client)


@pytest.fixture(scope="module")
def http_result(shapes_server):
    return evaluate(predictor(shapes_server, SHAPES), datasets.synthetic(EVAL_IMAGES))


def test_semantic_accuracy_through_the_service(http_result):
    # The bundled model reaches ~0.60 mIoU / 0.95 PA on held-out scenes (models/checkpoints); margin below.
    assert http_result["images"] == EVAL_IMAGES
    assert http_result["pixel_accuracy"] >= 0.90
    assert http_result["mean_iou"] >= 0.45
    assert http_result["iou_per_class"]["circle"] >= 0.5


def test_one_posted_scene_matches_its_truth(shapes_server):
    sample = next(datasets.synthetic(1, first_seed=datasets.HELD_OUT_SEED_BASE + 500))
    labels = predictor(shapes_server, SHAPES).semantic(sample)
    assert labels.shape == sample.labels.shape
    assert (labels == sample.labels).mean() >= 0.85


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_engine_direct_metrics_match_the_service_within_half_a_point(shapes_repo, http_result, backend):
    direct = evaluate(EnginePredictor(shapes_repo, SHAPES, backend), datasets.synthetic(EVAL_IMAGES))
    for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou"):
        assert abs(direct[key] - http_result[key]) * 100 <= 0.5, (key, direct[key], http_result[key])


def test_instance_mask_ap_through_the_service_matches_the_engine(instance_repo):
    """The bundled Mask R-CNN (exported once per session, tests/conftest.py) on its split path."""
    samples = list(datasets.synthetic(6, first_seed=datasets.HELD_OUT_SEED_BASE + 100))
    with InProcessServer(instance_repo, models=[INSTANCE_SPLIT]) as server:
        served = evaluate(predictor(server, INSTANCE_SPLIT), samples)
    direct = evaluate(EnginePredictor(instance_repo, INSTANCE_SPLIT, "onnxruntime"), samples)
    # The bundled model reaches mask AP50 ~0.57-0.65 on held-out scenes; margin below.
    assert served["mask_ap50"] >= 0.35
    for key in ("mask_ap", "mask_ap50", "mask_ap75"):
        assert abs(served[key] - direct[key]) * 100 <= 0.5, (key, served[key], direct[key])
