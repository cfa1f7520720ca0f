"""LRASPP cut in three for video: a shallow part every frame, a deep part on keyframes only.

torchvision's LRASPP (MobileNetV3-Large) computes ``low`` (stride 8, 40 channels) and
``high`` (stride 16, 960 channels) from one backbone, and its head combines them::

    deep   = cbr(high) * scale(high)                      # 128 channels, stride 16
    logits = low_classifier(low) + high_classifier(up(deep, size(low)))

The split keeps that arithmetic (up to float rounding; see ``Fuse``), in three graphs:

* **shallow** (every frame): uint8 frame -> ``low``. About a seventh of the model's MACs.
* **deep** (keyframes): ``low`` -> ``deep``. It starts from the shallow output, so a
  keyframe costs shallow + deep = one full model, not shallow + full model.
* **fuse** (keyframes): ``low`` + ``deep`` of the same frame -> per-pixel labels: the full
  model's output.
* **correct** (other frames, when the model has a trained correction): ``low`` of the current
  frame + ``deep`` and ``low`` of the last keyframe -> labels. A small head trained on
  synthetic video (models/video_correction.py) corrects the stale deep features where the
  frame moved on since the keyframe (Accel's idea, at a fraction of the cost). Without a
  correction, other frames go through **fuse** with the keyframe's ``deep``.

Each part is exported like a served model (uint8 in, normalisation in graph, dynamic
batch) into ``<version>/video/<part>/model.onnx`` of an already exported LRASPP model,
with a parity check of the keyframe path against the full model, and the model's
config.yaml gains ``parameters.video``.

    python -m segserve_models.video_split --repository model_repository --model shapes_lraspp \
        [--correction models/checkpoints/shapes_lraspp_video.pth]
"""

from __future__ import annotations

import argparse
import hashlib
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

from segserve.contract.artifacts import (
    CONFIG_FILE,
    EXPORT_RECORD,
    ONNX_ARTIFACT,
    VIDEO_DIR,
    WEIGHTS_ARTIFACT,
)
from segserve.contract.model_config import ModelConfig, latest_version, load_config
from segserve.contract.video import (
    CORRECTED_KEYFRAME_THRESHOLD,
    CORRECTED_MAX_KEYFRAME_INTERVAL,
    DEFAULT_KEYFRAME_THRESHOLD,
    DEFAULT_MAX_KEYFRAME_INTERVAL,
    SemanticParameters,
    VideoCorrection,
    VideoSplit,
)
from segserve.graphs import zoo
from segserve.graphs.serving import Normalize, SemanticServingModule
from segserve_models.export import ExportError, ParityReport, onnx_export, sample_images
from segserve_models.weights import BUNDLED_DIR, sha256_of, verify_bundled

log = logging.getLogger(__name__)

SPLIT_ARCHITECTURES = ("lraspp_mobilenet_v3_large",)


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
        return self.finish(self.low_classifier(low) + high)

    def finish(self, low_logits: torch.Tensor) -> torch.Tensor:
        """Stride-8 logits -> the output at input size: logits, or labels (uint8)."""
        logits = self.out_rows @ low_logits @ self.out_cols
        if self.output == "logits":
            return logits
        return logits.argmax(dim=1).to(torch.uint8)


class Correction(nn.Module):
    """A correction of the logits that a stale keyframe gives, from what changed since: (current
    ``low``, its change from the keyframe's ``low``, the stale logits) at stride 8 -> logit
    residual. Depthwise-separable with a dilated second stage, so it sees +-6 cells (+-48
    pixels: how far shapes get within a keyframe interval) for ~2.6 M multiply-adds at
    256x256, about 1 % of the full model's."""

    def __init__(self, low_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.mix = nn.Conv2d(2 * low_channels + num_classes, width, 1)
        self.near = nn.Conv2d(width, width, 5, padding=2, groups=width)
        self.near_mix = nn.Conv2d(width, width, 1)
        self.far = nn.Conv2d(width, width, 5, padding=4, dilation=2, groups=width)
        self.out = nn.Conv2d(width, num_classes, 1)
        nn.init.zeros_(self.out.weight)  # starts as "no correction": the plain stale fuse
        nn.init.zeros_(self.out.bias)

    def forward(self, low: torch.Tensor, key_low: torch.Tensor, stale: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.mix(torch.cat([low, low - key_low, stale], dim=1)))
        x = F.relu(self.near_mix(F.relu(self.near(x))))
        return self.out(F.relu(self.far(x)))


class CorrectedFuse(Fuse):
    """``low`` (current frame) + ``deep`` and ``low`` of the last keyframe -> labels, with the
    stale high-branch logits corrected by a trained ``Correction``."""

    input_names = ("low", "deep", "key_low")

    def __init__(self, net: nn.Module, correction: Correction, height: int, width: int, output: str = "labels"):
        super().__init__(net, height, width, output)
        self.correction = correction

    def corrected_logits(self, low: torch.Tensor, key_high: torch.Tensor, key_low: torch.Tensor) -> torch.Tensor:
        """Logits at stride 8 from the keyframe's ``high_classifier`` output (stride 16) and
        ``low``; training calls this with precomputed ``key_high``."""
        stale = self.deep_rows @ key_high @ self.deep_cols
        return self.low_classifier(low) + stale + self.correction(low, key_low, stale)

    def forward(self, low: torch.Tensor, deep: torch.Tensor, key_low: torch.Tensor) -> torch.Tensor:
        return self.finish(self.corrected_logits(low, self.high_classifier(deep), key_low))


def fingerprint(net: nn.Module) -> str:
    """sha256 of a network's weights: a correction is trained for one set of them."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def bundled_correction(weights: str) -> Path | None:
    """The bundled correction of ``bundled:NAME`` weights (checkpoints/NAME_video.pth,
    checked against SHA256SUMS), or None."""
    if not weights.startswith("bundled:"):
        return None
    path = BUNDLED_DIR / f"{weights.partition(':')[2]}_video.pth"
    if not path.is_file():
        return None
    verify_bundled(path)
    return path


def exported_correction_sha256(config: ModelConfig) -> str | None:
    """sha256 of the correction checkpoint a model's video split was exported with, if any."""
    video = SemanticParameters.model_validate(config.parameters).video
    return video.correction.sha256 if video is not None and video.correction is not None else None


def load_correction(path: Path, net: nn.Module) -> Correction:
    """A correction checkpoint (models/video_correction.py) for ``net``; refuses one trained
    for other weights."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("base_fingerprint") != fingerprint(net):
        raise ExportError(f"{path} was trained for other weights than this model's (fingerprint mismatch)")
    correction = Correction(checkpoint["low_channels"], checkpoint["num_classes"], checkpoint["width"])
    correction.load_state_dict(checkpoint["state_dict"])
    return correction.eval()


# Shallow and deep follow the frame size; fuse is built for the model's input size (the
# service letterboxes every frame to it), so only its batch axis is dynamic.
_SPATIAL_AXES = {
    "images": {0: "batch", 2: "height", 3: "width"},
    "low": {0: "batch", 2: "low_height", 3: "low_width"},
    "deep": {0: "batch", 2: "deep_height", 3: "deep_width"},
}
_SPATIAL_AXES["key_low"] = _SPATIAL_AXES["low"]


def export_part(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    names = [*module.input_names, *module.output_names]
    if isinstance(module, Fuse):  # CorrectedFuse too
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
    low_np = _Session(workdir / "shallow" / ONNX_ARTIFACT)(images=images.numpy())
    deep_np = _Session(workdir / "deep" / ONNX_ARTIFACT)(low=low_np)
    return ParityReport.compare(_Session(workdir / "fuse_logits.onnx")(low=low_np, deep=deep_np), ref)


def correct_parity(net: nn.Module, head: Correction, workdir: Path, height: int, width: int) -> ParityReport:
    """The correct part exported with logits (ONNX Runtime) against torch eager, for a frame
    and an earlier keyframe of different images."""
    key_images, images = sample_images(2, height, width, seed=3).split(1)
    module = CorrectedFuse(net, head, height, width, "logits").eval()
    with torch.no_grad():
        key_low = Shallow(net)(key_images)
        deep = Deep(net)(key_low)
        low = Shallow(net)(images)
        ref = module(low, deep, key_low).numpy()
    path = workdir / "correct_logits.onnx"
    export_part(module, (low, deep, key_low), path)
    session = _Session(path)
    report = ParityReport.compare(session(low=low.numpy(), deep=deep.numpy(), key_low=key_low.numpy()), ref)
    path.unlink()
    return report


def load_served_net(config: ModelConfig, version_dir: Path) -> nn.Module:
    """The network of an exported semantic model, from its ``weights.pt``."""
    serving = SemanticServingModule(zoo.get(config.architecture).build(len(config.classes)))
    serving.load_state_dict(torch.load(version_dir / WEIGHTS_ARTIFACT, map_location="cpu", weights_only=True))
    return serving.net.eval()


def export_video_split(
    repository: Path,
    name: str,
    *,
    correction: Path | None = None,
    keyframe_threshold: float | None = None,
    max_keyframe_interval: int | None = None,
) -> Path:
    """Add the video parts to the latest version of model ``name``, with the ``correction``
    checkpoint's part when given; returns their folder."""
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
    head = load_correction(correction, net) if correction is not None else None
    # recorded in export.json and config.yaml (how `segserve export --skip-existing` tells a retrained one)
    correction_record = VideoCorrection(file=correction.name, sha256=sha256_of(correction)) if correction is not None else None
    if keyframe_threshold is None:
        keyframe_threshold = CORRECTED_KEYFRAME_THRESHOLD if head is not None else DEFAULT_KEYFRAME_THRESHOLD
    if max_keyframe_interval is None:
        max_keyframe_interval = CORRECTED_MAX_KEYFRAME_INTERVAL if head is not None else DEFAULT_MAX_KEYFRAME_INTERVAL

    staging = Path(tempfile.mkdtemp(prefix=".video-", dir=version_dir))  # same filesystem: rename is atomic
    staging.chmod(0o755)  # mkdtemp's is owner-only: a server running as another user must read the parts
    try:
        with torch.no_grad():
            images = sample_images(1, height, width)
            low = Shallow(net)(images)
            deep = Deep(net)(low)
        parts = [
            ("shallow", Shallow(net), (images,)),
            ("deep", Deep(net), (low,)),
            ("fuse", Fuse(net, height, width, "labels"), (low, deep)),
        ]
        if head is not None:
            parts.append(("correct", CorrectedFuse(net, head, height, width, "labels"), (low, deep, low)))
        for part, module, example in parts:
            (staging / part).mkdir()
            export_part(module, example, staging / part / ONNX_ARTIFACT)
        report = keyframe_parity(net, staging, height, width)
        log.info("video split parity %s: max|diff| %.3g, agreement %.5f", name, report.max_abs_diff, report.label_agreement)
        report.check()
        (staging / "fuse_logits.onnx").unlink()
        provenance = {"parity_keyframe_vs_full": asdict(report)}
        if head is not None:
            provenance["correction"] = correction_record.model_dump()
            correct_report = correct_parity(net, head, staging, height, width)
            log.info("correct part parity %s: max|diff| %.3g, agreement %.5f", name, correct_report.max_abs_diff, correct_report.label_agreement)
            correct_report.check()
            provenance["parity_correct_vs_torch"] = asdict(correct_report)
        (staging / EXPORT_RECORD).write_text(json.dumps(provenance, indent=2))
        target = version_dir / VIDEO_DIR
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    split = VideoSplit(
        keyframe_threshold=keyframe_threshold,
        max_keyframe_interval=max_keyframe_interval,
        correction=correction_record,
    )
    config.parameters["video"] = split.model_dump(mode="json", exclude_none=True)
    config.dump(model_dir / CONFIG_FILE)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", required=True, help="name of an exported LRASPP model in the repository")
    parser.add_argument("--correction", type=Path, default=None,
                        help="a correction checkpoint trained for this model's weights (models/video_correction.py)")
    parser.add_argument("--keyframe-threshold", type=float, default=None,
                        help="default adaptive threshold: relative change of the shallow features "
                             f"(default {DEFAULT_KEYFRAME_THRESHOLD}, {CORRECTED_KEYFRAME_THRESHOLD} with a correction)")
    parser.add_argument("--max-keyframe-interval", type=int, default=None,
                        help=f"default longest keyframe interval ({DEFAULT_MAX_KEYFRAME_INTERVAL}, {CORRECTED_MAX_KEYFRAME_INTERVAL} with a correction)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    target = export_video_split(
        args.repository, args.model, correction=args.correction,
        keyframe_threshold=args.keyframe_threshold, max_keyframe_interval=args.max_keyframe_interval
    )
    log.info("video split of %s -> %s", args.model, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
