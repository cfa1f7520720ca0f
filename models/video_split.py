"""Semantic models cut for video: a shallow part every frame, a deep part on keyframes only.

Both split architectures share torchvision's dilated MobileNetV3-Large backbone, which
computes ``low`` (stride 8, 40 channels) and then ``high`` (stride 16, 960 channels); they
differ in the head, so each registers its cut points in ``CUT_POINTS`` (what the keyframe
caches as ``deep``, the 1x1 classifier on it, and the low-level classifier if the head has
one). The split keeps each head's arithmetic (up to float rounding; see ``Fuse``):

* LRASPP: ``deep = cbr(high) * scale(high)`` (128 channels, stride 16), and
  ``logits = low_classifier(low) + high_classifier(up(deep, size(low)))``.
* DeepLabV3: ``deep`` = ASPP + the head's 3x3 conv, BN, ReLU on ``high`` (256 channels,
  stride 16), and ``logits = up(classifier(deep), size(input))``: the head has no low-level
  branch, so ``low`` serves the keyframe decision (and a correction) only.

In three graphs (four with a correction):

* **shallow** (every frame): uint8 frame -> ``low``. About a seventh of LRASPP's MACs.
* **deep** (keyframes): ``low`` -> ``deep``. It starts from the shallow output, so a
  keyframe costs shallow + deep = one full model, not shallow + full model.
* **fuse** (keyframes): ``deep`` (and, for LRASPP, ``low``) of the same frame -> per-pixel
  labels: the full model's output.
* **correct** (other frames, when the model has a trained correction): ``low`` of the current
  frame + ``deep`` and ``low`` of the last keyframe -> labels. A small head trained on
  synthetic video (models/video_correction.py) corrects the stale deep features where the
  frame moved on since the keyframe (Accel's idea, at a fraction of the cost). Without a
  correction, other frames go through **fuse** with the keyframe's ``deep``: LRASPP's
  current low-level branch plus the stale high-level one; for DeepLabV3 the keyframe's head
  output as it was (Clockwork-style reuse: the labels hold until the next keyframe).

Each part is exported like a served model (uint8 in, normalisation in graph, dynamic
batch) into ``<version>/video/<part>/model.onnx`` of an already exported model, with a
parity check of the keyframe path against the full model, and the model's config.yaml
gains ``parameters.video`` (``split``: the kind, ``lraspp`` or ``deeplabv3``).

    python -m segserve_models.video_split --repository model_repository --model shapes_lraspp \
        [--correction models/checkpoints/shapes_lraspp_video.pth]
    segserve export --model deeplabv3_mobilenet_v3_large --weights random --video-split   # export + split in one

Why DeepLabV3's frames between keyframes hold the keyframe's head output by default rather
than being corrected: a correction is trained for one set of weights, and the only DeepLabV3
weights here are random (nothing bundled; pretrained ones need the internet). The machinery
takes one all the same (``CorrectedFuse`` adds the correction to the stale stride-8 logits,
without a low-level term), tested with a briefly trained one (tests/test_video_deeplabv3.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

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


class _LRASPPHighBranch(nn.Module):
    """LRASPP's high branch, ``cbr(high) * scale(high)``: the part of its head worth caching."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.cbr, self.scale = head.cbr, head.scale

    def forward(self, high: torch.Tensor) -> torch.Tensor:
        return self.cbr(high) * self.scale(high)


@dataclass(frozen=True)
class CutPoints:
    """Where an architecture's head is cut: ``deep_head`` (``high`` -> the cached ``deep``),
    ``classifier`` (``deep`` -> logits at stride 16, a 1x1 conv), and ``low_classifier``
    (``low`` -> logits at stride 8) for a head with a low-level branch."""

    kind: str  # VideoSplit.split: which tensors the parts take (segserve.contract.video)
    deep_head: Callable[[nn.Module], nn.Module]
    classifier: Callable[[nn.Module], nn.Module]
    low_classifier: Callable[[nn.Module], nn.Module] | None = None


# The one registry of split architectures. The backbone cut is theirs in common (_stride8_end).
CUT_POINTS: dict[str, CutPoints] = {
    "lraspp_mobilenet_v3_large": CutPoints(
        "lraspp", lambda net: _LRASPPHighBranch(net.classifier),
        lambda net: net.classifier.high_classifier, lambda net: net.classifier.low_classifier,
    ),
    # DeepLabHead = [ASPP, 3x3 conv, BN, ReLU, 1x1 conv]: the keyframe caches the 256
    # channels before the last 1x1 conv (which commutes with the upsampling; see Fuse)
    "deeplabv3_mobilenet_v3_large": CutPoints(
        "deeplabv3", lambda net: nn.Sequential(*list(net.classifier)[:-1]), lambda net: net.classifier[-1],
    ),
}
SPLIT_ARCHITECTURES = tuple(CUT_POINTS)


def _stride8_end(blocks: list[nn.Module]) -> int:
    """How many MobileNetV3 blocks make the stride-8 ``low`` features: the block torchvision
    taps as LRASPP's ``low`` and as DeepLabV3's auxiliary input (its stage indices[-4])."""
    stages = [0] + [i for i, block in enumerate(blocks) if getattr(block, "_is_cn", False)] + [len(blocks) - 1]
    return stages[-4] + 1


class SplitNet(nn.Module):
    """A split architecture's network as its parts see it (the same modules, not copies)."""

    def __init__(self, architecture: str, net: nn.Module):
        super().__init__()
        if architecture not in CUT_POINTS:
            raise ExportError(f"a video split exists for {SPLIT_ARCHITECTURES} only, not {architecture}")
        cut = CUT_POINTS[architecture]
        self.kind = cut.kind
        # torchvision's IntermediateLayerGetter: the backbone's blocks up to its deepest tap (``high``)
        blocks = list(net.backbone.values())
        low_end = _stride8_end(blocks)
        self.shallow_blocks, self.deep_blocks = nn.Sequential(*blocks[:low_end]), nn.Sequential(*blocks[low_end:])
        self.deep_head = cut.deep_head(net)
        self.classifier = cut.classifier(net)
        self.low_classifier = cut.low_classifier(net) if cut.low_classifier is not None else None

    @property
    def num_classes(self) -> int:
        return self.classifier.out_channels

    @property
    def low_channels(self) -> int:
        return self.shallow_blocks[-1].out_channels


class Shallow(nn.Module):
    """uint8 NCHW frames -> stride-8 ``low`` features."""

    input_names = ("images",)
    output_names = ("low",)

    def __init__(self, split: SplitNet):
        super().__init__()
        self.normalize = Normalize()
        self.blocks = split.shallow_blocks

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.normalize(images))


class Deep(nn.Module):
    """``low`` -> the rest of the backbone and the head's cached part (``CutPoints.deep_head``)."""

    input_names = ("low",)
    output_names = ("deep",)

    def __init__(self, split: SplitNet):
        super().__init__()
        self.blocks, self.head = split.deep_blocks, split.deep_head

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(low))


def resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_in, size_out): x @ M resizes the last axis exactly as F.interpolate(mode="bilinear",
    align_corners=False) does along one axis (bilinear is separable)."""
    return F.interpolate(torch.eye(size_in)[None], size=size_out, mode="linear", align_corners=False)[0]


class Fuse(nn.Module):
    """``deep`` (last keyframe), and ``low`` (current frame) for a head with a low-level
    branch -> labels (uint8) or logits, for frames of the model's input size.

    Two exact rewrites of the head make this, the per-frame cost besides shallow, cheaper:
    the 1x1 ``classifier`` runs before the upsampling instead of after (a 1x1 conv and
    bilinear upsampling commute: each output pixel's weights sum to 1), so a few class
    channels are upsampled instead of 128 (LRASPP) or 256 (DeepLabV3); and the fixed-size
    upsamplings are two small matmuls with constant matrices instead of Resize. Together they
    about halve LRASPP's fuse time on ONNX Runtime CPU (from ~14% of the full model's time to
    ~6%, at 256x256). DeepLabV3 upsamples its stride-16 logits straight to the input, as its
    head does; a correction works at stride 8 (``CorrectedFuse``).
    """

    def __init__(self, split: SplitNet, height: int, width: int, output: str = "labels"):
        super().__init__()
        self.classifier = split.classifier
        self.low_classifier = split.low_classifier
        self.input_names = ("deep",) if split.low_classifier is None else ("low", "deep")
        self.output = output
        self.output_names = (output,)
        with torch.no_grad():  # feature sizes for this input size, as the backbone computes them
            low = Shallow(split).eval()(torch.zeros(1, 3, height, width, dtype=torch.uint8))
            deep = Deep(split).eval()(low)
        (low_h, low_w), (deep_h, deep_w) = low.shape[-2:], deep.shape[-2:]
        for name, matrix in [
            ("deep_rows", resize_matrix(deep_h, low_h).t()), ("deep_cols", resize_matrix(deep_w, low_w)),  # stride 16 -> 8
            ("out_rows", resize_matrix(low_h, height).t()), ("out_cols", resize_matrix(low_w, width)),  # stride 8 -> input
            ("direct_rows", resize_matrix(deep_h, height).t()), ("direct_cols", resize_matrix(deep_w, width)),  # 16 -> input
        ]:
            self.register_buffer(name, matrix.contiguous(), persistent=False)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.input_names, features))
        high = self.classifier(given["deep"])
        if self.low_classifier is None:
            return self.to_output(self.direct_rows @ high @ self.direct_cols)
        return self.finish(self.low_classifier(given["low"]) + self.deep_rows @ high @ self.deep_cols)

    def finish(self, low_logits: torch.Tensor) -> torch.Tensor:
        """Stride-8 logits -> the output at input size: logits, or labels (uint8)."""
        return self.to_output(self.out_rows @ low_logits @ self.out_cols)

    def to_output(self, logits: torch.Tensor) -> torch.Tensor:
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
    stale deep logits corrected by a trained ``Correction``, at stride 8."""

    def __init__(self, split: SplitNet, correction: Correction, height: int, width: int, output: str = "labels"):
        super().__init__(split, height, width, output)
        self.input_names = ("low", "deep", "key_low")
        self.correction = correction

    def corrected_logits(self, low: torch.Tensor, key_high: torch.Tensor, key_low: torch.Tensor) -> torch.Tensor:
        """Logits at stride 8 from the keyframe's ``classifier`` output (stride 16) and
        ``low``; training calls this with precomputed ``key_high``."""
        stale = self.deep_rows @ key_high @ self.deep_cols
        current = stale if self.low_classifier is None else self.low_classifier(low) + stale
        return current + self.correction(low, key_low, stale)

    def forward(self, low: torch.Tensor, deep: torch.Tensor, key_low: torch.Tensor) -> torch.Tensor:
        return self.finish(self.corrected_logits(low, self.classifier(deep), key_low))


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


def export_part(module: nn.Module, example: dict[str, torch.Tensor], path: Path) -> None:
    """One part, from example tensors by name (it takes those of its ``input_names``)."""
    names = [*module.input_names, *module.output_names]
    if isinstance(module, Fuse):  # CorrectedFuse too
        dynamic = {n: {0: "batch"} for n in names}
    else:
        dynamic = {n: _SPATIAL_AXES[n] for n in names}
    onnx_export(module, tuple(example[n] for n in module.input_names), path, dynamic)


class _Session:
    def __init__(self, path: Path):
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    def __call__(self, **tensors: np.ndarray) -> np.ndarray:
        """The graph's output, fed those of ``tensors`` it takes."""
        return self._session.run(None, {name: tensors[name] for name in self._inputs})[0]


def keyframe_parity(split: SplitNet, net: nn.Module, workdir: Path, height: int, width: int, batch: int = 2) -> ParityReport:
    """The exported keyframe path (shallow -> deep -> fuse, ONNX Runtime) against the full
    model in torch eager, on logits."""
    with torch.no_grad():
        low = Shallow(split)(sample_images(1, height, width))
        deep = Deep(split)(low)
    export_part(Fuse(split, height, width, "logits"), {"low": low, "deep": deep}, workdir / "fuse_logits.onnx")
    images = sample_images(batch, height, width, seed=1)
    with torch.no_grad():
        ref = SemanticServingModule(net, "logits").eval()(images).numpy()
    low_np = _Session(workdir / "shallow" / ONNX_ARTIFACT)(images=images.numpy())
    deep_np = _Session(workdir / "deep" / ONNX_ARTIFACT)(low=low_np)
    return ParityReport.compare(_Session(workdir / "fuse_logits.onnx")(low=low_np, deep=deep_np), ref)


def correct_parity(split: SplitNet, head: Correction, workdir: Path, height: int, width: int) -> ParityReport:
    """The correct part exported with logits (ONNX Runtime) against torch eager, for a frame
    and an earlier keyframe of different images."""
    key_images, images = sample_images(2, height, width, seed=3).split(1)
    module = CorrectedFuse(split, head, height, width, "logits").eval()
    with torch.no_grad():
        key_low = Shallow(split)(key_images)
        deep = Deep(split)(key_low)
        low = Shallow(split)(images)
        ref = module(low, deep, key_low).numpy()
    path = workdir / "correct_logits.onnx"
    export_part(module, {"low": low, "deep": deep, "key_low": key_low}, path)
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
    split_net = SplitNet(config.architecture, net)
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
            low = Shallow(split_net)(images)
            example = {"images": images, "low": low, "deep": Deep(split_net)(low), "key_low": low}
        parts = {
            "shallow": Shallow(split_net),
            "deep": Deep(split_net),
            "fuse": Fuse(split_net, height, width, "labels"),
        }
        if head is not None:
            parts["correct"] = CorrectedFuse(split_net, head, height, width, "labels")
        contract = VideoSplit(split=split_net.kind)  # the tensors the service will feed each part
        for part, module in parts.items():
            if (tuple(module.input_names), module.output_names[0]) != contract.tensors(part):
                raise ExportError(f"{part} takes {module.input_names}, the {split_net.kind} split names {contract.tensors(part)}")
            (staging / part).mkdir()
            export_part(module, example, staging / part / ONNX_ARTIFACT)
        report = keyframe_parity(split_net, net, staging, height, width)
        log.info("video split parity %s: max|diff| %.3g, agreement %.5f", name, report.max_abs_diff, report.label_agreement)
        report.check()
        (staging / "fuse_logits.onnx").unlink()
        provenance = {"parity_keyframe_vs_full": asdict(report)}
        if head is not None:
            provenance["correction"] = correction_record.model_dump()
            correct_report = correct_parity(split_net, head, staging, height, width)
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
        split=split_net.kind,
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
    parser.add_argument("--model", required=True, help=f"name of an exported model in the repository ({', '.join(SPLIT_ARCHITECTURES)})")
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
