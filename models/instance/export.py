"""Instance-segmentation (Mask R-CNN) and keypoint (Keypoint R-CNN) export into the model
repository, parity-checked. Both detectors go through the one split path.

    export_instance_model("maskrcnn_mobilenet_v3_large_fpn", Path("model_repository"),
                          WeightsSpec.parse("models/checkpoints/shapes_maskrcnn.pth"))

A new version folder ``<repo>/<name>/<N>/`` gets:

- ``backbone.onnx``: canvas (batch, 3, H, W) of 0..255 pixels, float32 or uint8
  (``canvas_dtype``), + image sizes -> FPN features; dynamic batch/H/W
  (H, W multiples of 32). The split path's engine part (ONNX Runtime, TensorRT EP).
- ``weights.pt``: the whole torchvision state_dict: the torch backend's backbone *and*
  the RPN/RoI heads that run in torch on either backend.
- ``model_full.onnx`` (when the legacy exporter manages): the whole detector, batch 1,
  uint8 image as received -> detections before paste. The second serving path.
- ``export.json``: provenance and the parity figures of every path.

Keypoint R-CNN gets the same ``backbone.onnx`` + ``weights.pt`` (no whole graph: it is
served on the split path only) and its keypoints' names and skeleton in config.yaml.

The parity check runs every path against torchvision eager on the same weights and a
batch of images of odd sizes and aspect ratios; any failure removes the version folder
and raises. Random weights are made detector-like first (``random_init``), otherwise
every detection ties and parity means nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from segserve.contract.artifacts import (
    BACKBONE_ARTIFACT,
    CONFIG_FILE,
    EXPORT_RECORD,
    WEIGHTS_ARTIFACT,
    WHOLE_GRAPH_ARTIFACT,
)
from segserve.contract.instance import InstanceParameters
from segserve.contract.model_config import (
    DynamicBatching,
    InputSpec,
    KeypointSpec,
    ModelConfig,
    OnnxRuntimeOptions,
    Task,
    TorchOptions,
    WeightsInfo,
)
from segserve.engine.onnxruntime import OnnxRuntimeEngine
from segserve.engine.torch import TorchEngine
from segserve.graphs import zoo
from segserve.graphs.maskrcnn import MaskRCNNBackbone
from segserve.graphs.maskrcnn import load_heads
from segserve.pipelines.instance.runner import KeypointSplitRunner, SplitRunner, WholeGraphRunner
from segserve_models.export import (
    OPSET,
    ExportError,
    new_version_dir,
    onnx_export,
    resolve_weights,
    sample_images,
)
from segserve_models.instance.parity import compare_all, eager_instances, eager_keypoint_instances
from segserve_models.instance.random_init import lively_random_init
from segserve_models.instance.whole_graph import MaskRCNNWholeGraph
from segserve_models.synthetic import make_scene
from segserve_models.synthetic.keypoints import KEYPOINT_NAMES, KEYPOINTS_BY_CLASS
from segserve_models.weights import WeightsSpec

log = logging.getLogger(__name__)



def export_backbone(detector: torch.nn.Module, path: Path, canvas: tuple[int, int], dtype: str = "float32") -> None:
    module = MaskRCNNBackbone(detector).eval()
    axes = {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in module.output_names}
    axes["images"] = {0: "batch", 2: "height", 3: "width"}
    axes["image_sizes"] = {0: "batch"}
    sizes = torch.tensor([canvas, (canvas[0] - 37, canvas[1] - 61)], dtype=torch.int32)
    onnx_export(module, (sample_images(2, *canvas).to(getattr(torch, dtype)), sizes), path, axes)


def export_whole_graph(detector: torch.nn.Module, path: Path, example_size: tuple[int, int]) -> None:
    module = MaskRCNNWholeGraph(detector).eval()
    axes = {name: {0: "instances"} for name in ("boxes", "labels", "scores", "masks")}
    axes["images"] = {2: "height", 3: "width"}
    onnx_export(module, (sample_images(1, *example_size),), path, axes)


def keypoint_spec(arch: zoo.Architecture, weights: WeightsSpec, names: list[str] | None = None) -> KeypointSpec:
    """A keypoint model's names and skeleton: from its checkpoint when it says ("keypoints",
    "skeleton": the bundled models'), else ``names`` (no skeleton), else the architecture's.
    A model of the synthetic keypoints (its names are theirs) also says whose keypoints are whose."""
    if weights.path is not None and weights.path.is_file():
        raw = torch.load(weights.path, map_location="cpu", weights_only=True)
        if isinstance(raw, dict) and raw.get("keypoints"):
            names = list(raw["keypoints"])
            return KeypointSpec(names=names, skeleton=[tuple(p) for p in raw.get("skeleton", [])],
                                classes=KEYPOINTS_BY_CLASS if names == KEYPOINT_NAMES else {})
    if names:
        return KeypointSpec(names=list(names))
    return KeypointSpec(names=list(arch.keypoint_names), skeleton=[tuple(p) for p in arch.skeleton])


def parity_images(params: InstanceParameters, seed: int = 11) -> list[np.ndarray]:
    """Synthetic scenes (shapes on textures: objects for the bundled shape models, still
    photo-like input for any other) at odd sizes: landscape, portrait (upscaled and
    downscaled), and one torchvision does not resize."""
    big, small = params.max_size, params.min_size
    sizes = [(int(big * 0.55) | 1, int(big * 0.83) | 1), (int(big * 0.91) | 1, int(big * 0.47)), (small, small + 37)]
    return [make_scene(seed + i, h, w).image for i, (h, w) in enumerate(sizes)]


def check_parity(detector, config: ModelConfig, version_dir: Path, whole_graph: bool) -> dict[str, dict]:
    """Every serving path in ``version_dir`` vs torchvision eager (``models.instance.parity``).
    A miss on the served split path raises ExportError; a miss on the optional whole graph is
    reported (``ok: False``) for the caller to drop that artifact."""
    params = InstanceParameters.model_validate(config.parameters)
    canvas = (config.input.height, config.input.width)
    images = parity_images(params)
    threshold = 0.0  # every detection the detector returns, not only the served default's
    keypoints = config.task == Task.keypoints
    runner = KeypointSplitRunner if keypoints else SplitRunner

    def reference(batch: list[np.ndarray], uint8_resize: bool = False) -> list[list[dict]]:
        if keypoints:
            if uint8_resize:
                raise ExportError("keypoint models are checked on a float32 canvas only")
            return eager_keypoint_instances(detector, batch, threshold)
        return eager_instances(detector, batch, threshold, params.mask_threshold, uint8_resize)

    # the graphs are checked, in float32 on CPU; fp16 on a GPU is a separate, looser question
    cpu = OnnxRuntimeOptions(providers=["CPUExecutionProvider"])
    torch_cpu = config.model_copy(update={"torch": TorchOptions(device="cpu", fp16=False)})
    heads = load_heads(config, version_dir, device="cpu")
    split = {
        "split_onnxruntime": runner(OnnxRuntimeEngine(version_dir / BACKBONE_ARTIFACT, cpu), heads, params, canvas),
        "split_torch": runner(TorchEngine(torch_cpu, version_dir / WEIGHTS_ARTIFACT), heads, params, canvas),
    }
    # A float32 canvas is torchvision's exact input: compare with eager as is. A uint8
    # canvas rounds resized pixels, which eager cannot be expected to survive (see
    # segserve.codecs.rcnn_input); compare with eager given the same rounding.
    uint8 = params.canvas_dtype == "uint8"
    split_reference = reference(images, uint8_resize=uint8)
    checks = []  # (name, reference, served)
    for name, run in split.items():
        name += "_vs_eager" + ("_uint8_resize" if uint8 else "")
        checks.append((name, split_reference, run(images, score_threshold=threshold)))
    if whole_graph:  # batch 1 and torchvision's own resize: eager image by image
        run = WholeGraphRunner(OnnxRuntimeEngine(version_dir / WHOLE_GRAPH_ARTIFACT, cpu), params)
        served = run(images, score_threshold=threshold)
        checks.append(("whole_graph_onnxruntime_vs_eager", [reference([img])[0] for img in images], served))

    report = {}
    cut = max(threshold, params.box_score_thresh)  # the detector drops boxes below its own threshold
    for name, ref, served in checks:
        result = compare_all(ref, served, cut, params.max_instances)
        log.info("parity %s: %s", name, result)
        report[name] = {**result.as_dict(), "ok": result.ok}
        if not result.ok and not name.startswith("whole_graph"):
            raise ExportError(f"parity check failed: {name}: {result}")
    return report


def export_instance_model(
    architecture: str,
    repository: Path,
    weights: WeightsSpec,
    *,
    name: str | None = None,
    classes: list[str] | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    canvas: tuple[int, int] | None = None,
    max_batch_size: int | None = None,
    score_threshold: float = 0.5,
    box_score_thresh: float | None = None,
    canvas_dtype: str = "float32",
    whole_graph: bool = True,
    version: int | None = None,
    instances: int = 2,
    progress: bool = True,
    keypoint_names: list[str] | None = None,
) -> Path:
    """Export one Mask R-CNN or Keypoint R-CNN into ``repository``; returns the version folder
    written. A keypoint model's names and skeleton come from its weights (a checkpoint's
    "keypoints" and "skeleton"), else ``keypoint_names`` (no skeleton), else the architecture's.

    ``min_size``/``max_size`` override the architecture's resize targets (torchvision's
    GeneralizedRCNNTransform: short side to min_size unless the long side would pass
    max_size), e.g. to serve ResNet-50 at 512 instead of 1333; ``canvas`` (multiples of
    32) defaults to a square that holds max_size in either orientation."""
    arch = zoo.get(architecture)
    if arch.task not in ("instance", "keypoints"):
        raise ExportError(f"{architecture} is a {arch.task} model; its exporter is models.export")
    state, weight_classes, weights_detail = resolve_weights(arch, weights, progress=progress)
    classes = classes or weight_classes or arch.pretrained_classes
    if not classes:
        raise ExportError("no class names: pass classes (index 0 is the background) or use weights that carry them")
    task = Task(arch.task)
    keypoints = keypoint_spec(arch, weights, keypoint_names) if task == Task.keypoints else None
    whole_graph = whole_graph and task == Task.instance  # Keypoint R-CNN: the split path only

    torch.manual_seed(weights.seed)
    detector = zoo.build_for(ModelConfig(name="-", task=task, architecture=architecture, classes=classes, keypoints=keypoints)).eval()
    if state is None:
        lively_random_init(detector, seed=weights.seed)
        weights_detail += ", BatchNorm statistics calibrated, mask logits made solid (models.instance.random_init)"
    else:
        missing, unexpected = detector.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ExportError(f"weights do not fit {architecture}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if min_size is not None:
        detector.transform.min_size = (min_size,)
    if max_size is not None:
        detector.transform.max_size = max_size
    roi = detector.roi_heads
    if box_score_thresh is not None:
        roi.score_thresh = box_score_thresh
    params = InstanceParameters(
        min_size=detector.transform.min_size[-1],
        max_size=detector.transform.max_size,
        box_score_thresh=roi.score_thresh,
        max_instances=roi.detections_per_img,
        score_threshold=score_threshold,
        canvas_dtype=canvas_dtype,
    )
    canvas = canvas or params.default_canvas()
    if canvas[0] % 32 or canvas[1] % 32:
        raise ExportError(f"canvas {canvas} must be multiples of 32")

    name = name or architecture
    version_dir = new_version_dir(repository, name, version)
    model_dir = version_dir.parent
    try:
        torch.save(detector.state_dict(), version_dir / WEIGHTS_ARTIFACT)
        export_backbone(detector, version_dir / BACKBONE_ARTIFACT, canvas, params.canvas_dtype)
        whole_graph_error = None
        if whole_graph:
            try:
                export_whole_graph(detector, version_dir / WHOLE_GRAPH_ARTIFACT, (params.min_size, params.max_size))
            except Exception as exc:  # noqa: BLE001 - optional path: recorded, the split path still serves
                whole_graph_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s: whole-graph export failed, split path only: %s", name, whole_graph_error)
                (version_dir / WHOLE_GRAPH_ARTIFACT).unlink(missing_ok=True)
        has_whole_graph = whole_graph and whole_graph_error is None
        config = ModelConfig(
            name=name,
            task=task,
            architecture=architecture,
            classes=list(classes),
            keypoints=keypoints,
            input=InputSpec(height=canvas[0], width=canvas[1]),
            max_batch_size=max_batch_size or arch.default_max_batch,
            dynamic_batching=DynamicBatching(),
            # Two instances (backbone + heads each, one thread each on CPU) served 2.2x the
            # requests/s of one on 2 CPU cores (docs/instance.md): the heads do not batch.
            instances=instances,
            # the split path's graph; model_full.onnx with parameters.default_path: whole_graph
            onnxruntime=OnnxRuntimeOptions(model_file=BACKBONE_ARTIFACT),
            # the heads run in torch on either backend; on CPU, 2+ intra-op threads made them
            # 3-10x slower under load on small machines (docs/instance.md). Ignored on CUDA.
            torch=TorchOptions(threads=1),
            weights=WeightsInfo(source=weights.source, detail=weights_detail),
            parameters=params.model_dump(),
        )
        parity = check_parity(detector, config, version_dir, has_whole_graph)
        whole_graph_parity = parity.get("whole_graph_onnxruntime_vs_eager", {"ok": True})
        if not whole_graph_parity["ok"]:  # seen once: random ResNet-50 weights, an NMS near-tie at IoU 0.5
            whole_graph_error = f"parity check failed: {whole_graph_parity}"
            log.warning("%s: whole graph dropped, split path only: %s", name, whole_graph_error)
            (version_dir / WHOLE_GRAPH_ARTIFACT).unlink()
            has_whole_graph = False
    except Exception:
        shutil.rmtree(version_dir)
        raise

    config.dump(model_dir / CONFIG_FILE)
    provenance = {
        "architecture": architecture,
        "weights": weights_detail,
        "weights_source": weights.source,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "onnx_opset": OPSET,
        "artifacts": {
            "split": [BACKBONE_ARTIFACT, WEIGHTS_ARTIFACT],
            "whole_graph": WHOLE_GRAPH_ARTIFACT if has_whole_graph else None,
        },
        "whole_graph_error": whole_graph_error,
        "parity": parity,
    }
    (version_dir / EXPORT_RECORD).write_text(json.dumps(provenance, indent=2))
    return version_dir
