"""Mask R-CNN split for serving: parity with torchvision eager, paste-to-RLE, size mapping.

Random weights made detector-like (models.instance.random_init); the MobileNet model at a
small resize (min 160 / max 256) keeps the file fast on 2 CPU cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from segserve.contract.artifacts import BACKBONE_ARTIFACT, WEIGHTS_ARTIFACT, WHOLE_GRAPH_ARTIFACT
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import OnnxRuntimeOptions, TorchOptions, load_config
from segserve.engine.factory import create_engine
from segserve.engine.onnxruntime import OnnxRuntimeEngine
from segserve.graphs import zoo
from segserve.graphs.maskrcnn import MaskRCNNBackbone, MaskRCNNHeads, load_heads
from segserve.codecs.box_masks import masks_to_rles
from segserve.codecs.detections import to_instances
from segserve.codecs.rcnn_input import collate, preprocess, resize_scale
from segserve.pipelines.instance.runner import SplitRunner, WholeGraphRunner
from segserve_models.export import sample_images
from segserve_models.instance.export import export_instance_model
from segserve_models.instance.parity import compare_all, eager_instances
from segserve_models.instance.random_init import lively_random_init
from segserve_models.weights import WeightsSpec

# pycocotools 2.0.11 under numpy 2 warns on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

ARCH = "maskrcnn_mobilenet_v3_large_fpn"
CLASSES = ["__background__", "circle", "square", "triangle"]
MIN_SIZE, MAX_SIZE = 160, 256
CUT = 0.05  # the detector's box_score_thresh: where instances may legitimately come and go
CPU = OnnxRuntimeOptions(providers=["CPUExecutionProvider"], intra_op_threads=1)


def image(height: int, width: int, seed: int) -> np.ndarray:
    return sample_images(1, height, width, seed=seed)[0].permute(1, 2, 0).numpy().copy()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On 2 shared cores, 2 OpenMP threads make these small convolutions 10-30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def export_small(tmp_path_factory, arch: str, seed: int, classes: list[str]):
    """One random-weight export at the small resize (with the exporter's parity check): (version_dir, config)."""
    repo = tmp_path_factory.mktemp("repo")
    version_dir = export_instance_model(
        arch, repo, WeightsSpec.parse(f"random:{seed}"), classes=classes, min_size=MIN_SIZE, max_size=MAX_SIZE, progress=False
    )
    return version_dir, load_config(version_dir.parent)


def eager_detector(exported):
    """torchvision eager with the exported weights and settings: the reference."""
    version_dir, config = exported
    net = zoo.build_for(config)
    net.load_state_dict(torch.load(version_dir / WEIGHTS_ARTIFACT, weights_only=True))
    net.transform.min_size, net.transform.max_size = (MIN_SIZE,), MAX_SIZE
    net.roi_heads.score_thresh = config.parameters["box_score_thresh"]
    return net.eval()


def small_export_fixtures(arch: str, seed: int, classes: list[str]):
    """A module's ``exported`` (one export shared by its tests) and ``detector`` fixtures."""

    @pytest.fixture(scope="module", name="exported")
    def exported_fixture(tmp_path_factory):
        return export_small(tmp_path_factory, arch, seed, classes)

    @pytest.fixture(scope="module", name="detector")
    def detector_fixture(exported):
        return eager_detector(exported)

    return exported_fixture, detector_fixture


exported, detector = small_export_fixtures(ARCH, 3, CLASSES)


def split_runner(exported, backend: str, runner: type[SplitRunner] = SplitRunner) -> SplitRunner:
    version_dir, config = exported
    config = config.model_copy(update={"torch": TorchOptions(device="cpu", fp16=False), "onnxruntime": CPU})
    params = InstanceParameters.model_validate(config.parameters)
    if backend == "onnxruntime":  # the factory knows model.onnx; the split path's graph is backbone.onnx
        engine = OnnxRuntimeEngine(version_dir / BACKBONE_ARTIFACT, CPU)
    else:
        engine = create_engine(config, version_dir, "torch")
    heads = load_heads(config, version_dir, device="cpu")
    return runner(engine, heads, params, (config.input.height, config.input.width))


# ---- export --------------------------------------------------------------------------


def test_export_writes_every_artifact_and_a_passed_parity_report(exported):
    version_dir, config = exported
    for artifact in (BACKBONE_ARTIFACT, WEIGHTS_ARTIFACT, WHOLE_GRAPH_ARTIFACT, "export.json"):
        assert (version_dir / artifact).is_file(), artifact
    assert config.task.value == "instance" and config.architecture == ARCH and config.classes == CLASSES
    assert (config.input.height, config.input.width) == (256, 256)
    params = InstanceParameters.model_validate(config.parameters)
    assert (params.min_size, params.max_size, params.default_path) == (MIN_SIZE, MAX_SIZE, "split")
    parity = json.loads((version_dir / "export.json").read_text())["parity"]
    assert set(parity) == {"split_onnxruntime_vs_eager", "split_torch_vs_eager", "whole_graph_onnxruntime_vs_eager"}
    for report in parity.values():
        assert report["unmatched"] == 0 and report["matched"] >= 0.9 * report["reference"] > 0


def test_weights_are_the_whole_torchvision_state_dict(exported):
    version_dir, _ = exported
    state = torch.load(version_dir / WEIGHTS_ARTIFACT, weights_only=True)
    assert state.keys() == zoo.get(ARCH).build(len(CLASSES)).state_dict().keys()


def test_coco_models_get_torchvision_category_names():
    names = zoo.get("maskrcnn_resnet50_fpn").pretrained_classes
    assert len(names) == 91 and names[0] == "__background__" and names[1] == "person" and "N/A" in names


# ---- split path vs torchvision eager -------------------------------------------------

# Short side = min_size, long side <= max_size: torchvision does not resize these, so even
# a uint8 canvas is its exact input. Batched together at different sizes.
UNRESIZED = [(MIN_SIZE, 237), (203, MIN_SIZE), (MIN_SIZE, MIN_SIZE)]
# Resized ones: up and down, odd sizes, extreme aspect ratios.
RESIZED = [(97, 131), (333, 157), (120, 601)]


@pytest.fixture(scope="module")
def eager_case(detector):
    images = [image(h, w, seed=i) for i, (h, w) in enumerate(RESIZED + UNRESIZED)]
    return images, eager_instances(detector, images, 0.0)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_split_path_matches_torchvision_eager(exported, eager_case, backend):
    images, reference = eager_case
    result = compare_all(reference, split_runner(exported, backend)(images, score_threshold=0.0), CUT, 100)
    assert result.ok and result.matched >= 0.95 * result.reference > 0, result
    assert result.max_box_diff <= 0.01 and result.max_score_diff <= 1e-4, result


def split_module_runner(net, params: InstanceParameters, runner: type[SplitRunner] = SplitRunner) -> SplitRunner:
    """The split path with the backbone module called directly (no export needed)."""
    backbone = MaskRCNNBackbone(net).eval()

    class ModuleEngine:
        def infer(self, inputs):
            with torch.no_grad():
                out = backbone(*(torch.from_numpy(inputs[name]) for name in backbone.input_names))
            return {name: t.numpy() for name, t in zip(backbone.output_names, out)}

    return runner(ModuleEngine(), MaskRCNNHeads(net), params, params.default_canvas())


def test_uint8_canvas_matches_eager_given_the_same_rounding(detector):
    params = InstanceParameters(min_size=MIN_SIZE, max_size=MAX_SIZE, canvas_dtype="uint8")
    run = split_module_runner(detector, params)
    resized = [image(h, w, seed=10 + i) for i, (h, w) in enumerate(RESIZED)]
    reference = eager_instances(detector, resized, 0.0, uint8_resize=True)
    result = compare_all(reference, run(resized, score_threshold=0.0), CUT, 100)
    assert result.ok and result.matched >= 0.95 * result.reference > 0, result
    unresized = [image(h, w, seed=i) for i, (h, w) in enumerate(UNRESIZED)]
    result = compare_all(eager_instances(detector, unresized, 0.0), run(unresized, score_threshold=0.0), CUT, 100)
    assert result.ok and result.matched >= 0.95 * result.reference > 0, result


def test_whole_graph_matches_torchvision_eager(exported, detector):
    version_dir, config = exported
    run = WholeGraphRunner(OnnxRuntimeEngine(version_dir / WHOLE_GRAPH_ARTIFACT, CPU), InstanceParameters.model_validate(config.parameters))
    images = [image(h, w, seed=20 + i) for i, (h, w) in enumerate(RESIZED[:2] + UNRESIZED[:1])]
    reference = [eager_instances(detector, [img], 0.0)[0] for img in images]
    result = compare_all(reference, run(images, score_threshold=0.0), CUT, 100)
    assert result.ok and result.matched >= 0.95 * result.reference > 0, result


def test_served_instances_map_back_to_the_original_size(exported):
    run = split_runner(exported, "onnxruntime")
    sizes = [(97, 131), (333, 157), (120, 601), (MIN_SIZE, 237)]
    for (h, w), found in zip(sizes, run([image(h, w, seed=30) for h, w in sizes], score_threshold=0.0)):
        assert found, (h, w)
        for inst in found:
            assert inst["rle"]["size"] == [h, w]
            x0, y0, x1, y1 = inst["box"]
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
        assert mask_utils.decode(found[0]["rle"]).shape == (h, w)
        scores = [inst["score"] for inst in found]
        assert scores == sorted(scores, reverse=True)


def test_served_defaults_and_limits(exported):
    run = split_runner(exported, "onnxruntime")
    img = image(MIN_SIZE, 237, seed=40)
    everything = run([img], score_threshold=0.0)[0]
    cut = everything[len(everything) // 2]["score"]
    assert [i["score"] for i in run([img], score_threshold=cut)[0]] == [i["score"] for i in everything if i["score"] >= cut]
    resized, meta = run.prepare(img)
    (detections,) = run.run_batch([(resized, meta)])
    assert len(to_instances(detections, meta, 0.0, max_instances=5)) == 5


def test_resnet50_split_matches_eager():
    """The COCO architecture, small: backbone module + heads vs eager."""
    torch.manual_seed(0)
    net = lively_random_init(zoo.get("maskrcnn_resnet50_fpn").build(91)).eval()
    net.transform.min_size, net.transform.max_size = (128,), 192
    net.rpn._post_nms_top_n["testing"] = 300  # fewer proposals: the box head is most of the time
    run = split_module_runner(net, InstanceParameters(min_size=128, max_size=192))
    images = [image(97, 171, seed=50), image(160, 128, seed=51)]
    served = run(images, score_threshold=0.0)
    result = compare_all(eager_instances(net, images, 0.0), served, CUT, 100)
    assert result.ok and result.matched >= 0.95 * result.reference > 0, result


# ---- preprocess ------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(97, 131), (333, 157), (120, 601), (160, 237), (1080, 1920), (7, 5)])
def test_resize_matches_torchvision(height, width):
    net = zoo.get(ARCH).build(len(CLASSES))
    net.transform.min_size, net.transform.max_size = (MIN_SIZE,), MAX_SIZE
    img = image(height, width, seed=1)
    batch, _ = net.transform([torch.from_numpy(img).permute(2, 0, 1).float() / 255])
    resized, meta = preprocess(img, MIN_SIZE, MAX_SIZE, (256, 256))
    assert meta.original_size == (height, width)
    assert meta.resized_size == tuple(batch.image_sizes[0]) == resized.shape[1:]
    rh, rw = meta.resized_size
    mean, std = torch.tensor(net.transform.image_mean)[:, None, None], torch.tensor(net.transform.image_std)[:, None, None]
    theirs = ((batch.tensors[0, :, :rh, :rw] * std + mean) * 255).numpy()
    assert np.abs(resized - theirs).max() <= 1e-3  # float32: torchvision's pixels
    rounded, _ = preprocess(img, MIN_SIZE, MAX_SIZE, (256, 256), dtype="uint8")
    assert np.abs(rounded - theirs).max() <= 0.5 + 1e-3


def test_an_image_too_big_for_the_canvas_is_shrunk_to_fit():
    # portrait into a landscape canvas: torchvision's scale would make it 256 tall
    assert resize_scale(300, 200, MIN_SIZE, MAX_SIZE) == pytest.approx(MIN_SIZE / 200)
    resized, meta = preprocess(image(300, 200, seed=2), MIN_SIZE, MAX_SIZE, (128, 256))
    assert meta.resized_size == resized.shape[1:] and meta.resized_size[0] <= 128


def test_collate_pads_like_torchvision_batching():
    prepared = [preprocess(image(h, w, seed=3), MIN_SIZE, MAX_SIZE, (256, 256)) for h, w in [(97, 131), (333, 157)]]
    batch = collate([r for r, _ in prepared], [m for _, m in prepared])
    # resized 160x216 and 256x120: torchvision pads the batch to multiples of 32 of the max
    assert batch["images"].shape == (2, 3, 256, 224) and batch["images"].dtype == np.float32
    assert batch["image_sizes"].tolist() == [[160, 216], [256, 120]]
    assert (batch["images"][0, :, :160, :216] == prepared[0][0]).all() and not batch["images"][0, :, 160:].any()


# ---- paste to RLE ----------------------------------------------------------------------


def blob_masks(n: int, seed: int) -> torch.Tensor:
    """Object-like 28x28 probabilities: a soft blob plus noise, off-centre, asymmetric."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    blob = 1 - ((xx - 0.2) ** 2 + (yy / 0.7) ** 2)
    return (blob[None] + 0.4 * torch.randn(n, 28, 28, generator=g)).clamp(0, 1)


def boxes_inside(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(n, 2, generator=g) * torch.tensor([width / 2, height / 2]) + 0.3
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([width, height]) - wh)
    boxes = torch.cat([xy, xy + wh], dim=1)
    # the edges the run-length bookkeeping cares about: whole image (columns meet in the
    # flattened order), touching each border, sub-pixel
    edge = [[0, 0, width, height], [0, 0, width - 1, height - 1], [0, 5.5, 12.3, height], [width - 9.7, 0, width, 30.2], [3.2, 4.1, 3.6, 4.4]]
    return torch.cat([boxes, torch.tensor(edge, dtype=torch.float32)])


@pytest.mark.parametrize("height,width,threshold", [(720, 1280, 0.5), (97, 131, 0.5), (333, 157, 0.3)])
def test_rle_equals_torchvision_paste_and_threshold(height, width, threshold):
    boxes = boxes_inside(40, height, width, seed=height)
    masks = blob_masks(len(boxes), seed=width)
    pasted = paste_masks_in_image(masks[:, None], boxes, (height, width))[:, 0] > threshold
    expected = mask_utils.encode(np.asfortranarray(pasted.permute(1, 2, 0).numpy().astype(np.uint8)))
    got = masks_to_rles(masks.numpy(), boxes.numpy(), (height, width), threshold)
    assert [r["counts"] for r in got] == [r["counts"] for r in expected]
    ious = mask_utils.iou(got, expected, [0] * len(got)).diagonal()
    assert (ious[mask_utils.area(expected) > 0] == 1).all()


def test_rle_of_no_detections_is_empty():
    assert masks_to_rles(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (10, 10)) == []
