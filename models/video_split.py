"""LRASPP cut in three for video: a shallow part every frame, a deep part on keyframes only.

torchvision's LRASPP (MobileNetV3-Large) computes ``low`` (stride 8, 40 channels) and
``high`` (stride 16, 960 channels) from one backbone, and its head combines them::

    deep   = cbr(high) * scale(high)                      # 128 channels, stride 16
    logits = low_classifier(low) + high_classifier(up(deep, size(low)))

The split keeps that arithmetic (up to float rounding; see ``Fuse``), in three graphs:

* **shallow** (every frame): uint8 frame -> ``low``. About a seventh of the model's MACs.
* **deep** (keyframes): ``low`` -> ``deep``. It starts from the shallow output, so a
  keyframe costs shallow + deep = one full model, not shallow + full model.
* **fuse** (every frame): ``low`` of the current frame + ``deep`` of the last keyframe ->
  per-pixel labels. On a keyframe the result is the full model's output.

Each part is exported like a served model (uint8 in, normalisation in graph, dynamic
batch) into ``<version>/video/<part>/model.onnx`` of an already exported LRASPP model,
with a parity check of the keyframe path against the full model, and the model's
config.yaml gains ``parameters.video``.

    python -m models.video_split --repository model_repository --model shapes_lraspp
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import zoo
from models.export import ExportError, ParityReport, onnx_export, sample_images
from models.serving import Normalize, SemanticServingModule
from service.repository import CONFIG_FILE, ModelConfig, load_config, latest_version

log = logging.getLogger(__name__)

SPLIT_ARCHITECTURES = ("lraspp_mobilenet_v3_large",)
VIDEO_DIR = "video"  # inside the version folder
PARTS = ("shallow", "deep", "fuse")
DEFAULT_KEYFRAME_THRESHOLD = 1.0  # calibrated with models/video_bench.py on seeds apart from the reported ones
DEFAULT_MAX_KEYFRAME_INTERVAL = 16


def _backbone_halves(net: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """The backbone's blocks up to the ``low`` tap, and those after it up to ``high``."""
    getter = net.backbone  # torchvision IntermediateLayerGetter: an ordered ModuleDict of blocks
    taps = {role: name for name, role in getter.return_layers.items()}
    names = list(getter.keys())
    low_end = names.index(taps["low"]) + 1
    high_end = names.index(taps["high"]) + 1
    return nn.Sequential(*(getter[n] for n in names[:low_end])), nn.Sequential(*(getter[n] for n in names[low_end:high_end]))


class Shallow(nn.Module):
    """uint8 NCHW frames -> stride-8 ``low`` features."""

    input_names = ("images",)
    output_names = ("low",)

    def __init__(self, net: nn.Module):
        super().__init__()
        self.normalize = Normalize()
        self.blocks, _ = _backbone_halves(net)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.normalize(images))


class Deep(nn.Module):
    """``low`` -> the head's high branch, ``cbr(high) * scale(high)`` (the part worth caching)."""

    input_names = ("low",)
    output_names = ("deep",)

    def __init__(self, net: nn.Module):
        super().__init__()
        _, self.blocks = _backbone_halves(net)
        self.cbr = net.classifier.cbr
        self.scale = net.classifier.scale

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        high = self.blocks(low)
        return self.cbr(high) * self.scale(high)


def resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_in, size_out): x @ M resizes the last axis exactly as F.interpolate(mode="bilinear",
    align_corners=False) does along one axis (bilinear is separable)."""
    return F.interpolate(torch.eye(size_in)[None], size=size_out, mode="linear", align_corners=False)[0]


class Fuse(nn.Module):
    """``low`` (current frame) + ``deep`` (last keyframe) -> labels (uint8) or logits, for
    frames of the model's input size.

    Two exact rewrites of the head make this, the per-frame cost besides shallow, cheaper:
    the 1x1 ``high_classifier`` runs before the upsampling instead of after (a 1x1 conv and
    bilinear upsampling commute: each output pixel's weights sum to 1), so 6 class channels
    are upsampled instead of 128; and the fixed-size upsamplings are two small matmuls with
    constant matrices instead of Resize. Together they about halve fuse's time on ONNX
    Runtime CPU (from ~14% of the full model's time to ~6%, at 256x256).
    """

    input_names = ("low", "deep")

    def __init__(self, net: nn.Module, height: int, width: int, output: str = "labels"):
        super().__init__()
        self.low_classifier = net.classifier.low_classifier
        self.high_classifier = net.classifier.high_classifier
        self.output = output
        self.output_names = (output,)
        with torch.no_grad():  # feature sizes for this input size, as the backbone computes them
            low = Shallow(net).eval()(torch.zeros(1, 3, height, width, dtype=torch.uint8))
            deep = Deep(net).eval()(low)
        (low_h, low_w), (deep_h, deep_w) = low.shape[-2:], deep.shape[-2:]
        self.register_buffer("deep_rows", resize_matrix(deep_h, low_h).t().contiguous(), persistent=False)
        self.register_buffer("deep_cols", resize_matrix(deep_w, low_w), persistent=False)
        self.register_buffer("out_rows", resize_matrix(low_h, height).t().contiguous(), persistent=False)
        self.register_buffer("out_cols", resize_matrix(low_w, width), persistent=False)

    def forward(self, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        high = self.deep_rows @ self.high_classifier(deep) @ self.deep_cols
        logits = self.out_rows @ (self.low_classifier(low) + high) @ self.out_cols
        if self.output == "logits":
            return logits
        return logits.argmax(dim=1).to(torch.uint8)


# Shallow and deep follow the frame size; fuse is built for the model's input size (the
# service letterboxes every frame to it), so only its batch axis is dynamic.
_SPATIAL_AXES = {
    "images": {0: "batch", 2: "height", 3: "width"},
    "low": {0: "batch", 2: "low_height", 3: "low_width"},
    "deep": {0: "batch", 2: "deep_height", 3: "deep_width"},
}


def export_part(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    names = [*module.input_names, *module.output_names]
    if isinstance(module, Fuse):
        dynamic = {n: {0: "batch"} for n in names}
    else:
        dynamic = {n: _SPATIAL_AXES[n] for n in names}
    onnx_export(module, example, path, dynamic)


class _Session:
    def __init__(self, path: Path):
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self._session.run(None, inputs)[0]


def keyframe_parity(net: nn.Module, workdir: Path, height: int, width: int, batch: int = 2) -> ParityReport:
    """The exported keyframe path (shallow -> deep -> fuse, ONNX Runtime) against the full
    model in torch eager, on logits."""
    with torch.no_grad():
        low = Shallow(net)(sample_images(1, height, width))
        deep = Deep(net)(low)
    export_part(Fuse(net, height, width, "logits"), (low, deep), workdir / "fuse_logits.onnx")
    images = sample_images(batch, height, width, seed=1)
    with torch.no_grad():
        ref = SemanticServingModule(net, "logits").eval()(images).numpy()
    low_np = _Session(workdir / "shallow" / "model.onnx")(images=images.numpy())
    deep_np = _Session(workdir / "deep" / "model.onnx")(low=low_np)
    return ParityReport.compare(_Session(workdir / "fuse_logits.onnx")(low=low_np, deep=deep_np), ref)


def load_served_net(config: ModelConfig, version_dir: Path) -> nn.Module:
    """The network of an exported semantic model, from its ``weights.pt``."""
    serving = SemanticServingModule(zoo.get(config.architecture).build(len(config.classes)))
    serving.load_state_dict(torch.load(version_dir / "weights.pt", map_location="cpu", weights_only=True))
    return serving.net.eval()


def export_video_split(
    repository: Path,
    name: str,
    *,
    keyframe_threshold: float = DEFAULT_KEYFRAME_THRESHOLD,
    max_keyframe_interval: int = DEFAULT_MAX_KEYFRAME_INTERVAL,
) -> Path:
    """Add the video parts to the latest version of model ``name``; returns their folder."""
    model_dir = repository / name
    config = load_config(model_dir)
    version = latest_version(model_dir)
    if version is None:
        raise ExportError(f"{model_dir} has no version folder: export the model first")
    if config.architecture not in SPLIT_ARCHITECTURES:
        raise ExportError(f"{name} is {config.architecture}; a video split exists for {SPLIT_ARCHITECTURES} only")
    height, width = config.input.height, config.input.width
    version_dir = model_dir / str(version)
    net = load_served_net(config, version_dir)

    staging = Path(tempfile.mkdtemp(prefix=".video-", dir=version_dir))  # same filesystem: rename is atomic
    try:
        with torch.no_grad():
            images = sample_images(1, height, width)
            low = Shallow(net)(images)
            deep = Deep(net)(low)
        for part, module, example in (
            ("shallow", Shallow(net), (images,)),
            ("deep", Deep(net), (low,)),
            ("fuse", Fuse(net, height, width, "labels"), (low, deep)),
        ):
            (staging / part).mkdir()
            export_part(module, example, staging / part / "model.onnx")
        report = keyframe_parity(net, staging, height, width)
        log.info("video split parity %s: max|diff| %.3g, agreement %.5f", name, report.max_abs_diff, report.label_agreement)
        report.check()
        (staging / "fuse_logits.onnx").unlink()
        (staging / "export.json").write_text(json.dumps({"parity_keyframe_vs_full": asdict(report)}, indent=2))
        target = version_dir / VIDEO_DIR
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    config.parameters["video"] = {
        "split": "lraspp",
        "dir": VIDEO_DIR,
        "keyframe_threshold": keyframe_threshold,
        "max_keyframe_interval": max_keyframe_interval,
    }
    config.dump(model_dir / CONFIG_FILE)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", required=True, help="name of an exported LRASPP model in the repository")
    parser.add_argument("--keyframe-threshold", type=float, default=DEFAULT_KEYFRAME_THRESHOLD,
                        help="default adaptive threshold: relative change of the shallow features")
    parser.add_argument("--max-keyframe-interval", type=int, default=DEFAULT_MAX_KEYFRAME_INTERVAL)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    target = export_video_split(
        args.repository, args.model, keyframe_threshold=args.keyframe_threshold, max_keyframe_interval=args.max_keyframe_interval
    )
    log.info("video split of %s -> %s", args.model, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
