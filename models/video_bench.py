"""Keyframe feature reuse on synthetic video: accuracy, flicker and speed per keyframe policy.

    python -m segserve_models.video_bench --repository model_repository --model shapes_lraspp

Any model with a video split (LRASPP or DeepLabV3, models/video_split.py) runs.

Engine level, no HTTP and no batching: one stream at a time, one frame at a time, on the
model's exported ONNX graphs under ONNX Runtime, with the server's own keyframe code
(``KeyframeTracker``). "per-frame" runs the full ``model.onnx`` on every frame; the other
rows run the video split as the server does: shallow on every frame, deep + fuse on
keyframes, and on other frames the trained correction when the model has one (else fuse
with the keyframe's deep features). ``--no-correction`` adds the rows without it.

Frames are letterboxed like the server does and predictions are scored at the original
frame size against the synthetic ground truth (models/synthetic):

* mIoU: over all frames of all clips, mean over classes present in truth or prediction;
* agreement with per-frame: share of pixels labelled as the full model labels them on the
  same frame, and the mIoU with those per-frame labels as the truth: what reuse costs
  whatever the weights (the only meaningful accuracy figures for a random-weight model);
* flicker: share of pixels whose predicted label changes between consecutive frames where
  the true label does not;
* frames/s: engine time only (decode, letterbox and scoring excluded); per clip the best of
  --repeats passes, interleaved clip by clip across the rows.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segserve.codecs.geometry import Letterbox
from segserve.contract.model_config import ModelConfig, latest_version, load_config
from segserve.contract.video import SemanticParameters
from segserve.engine import Engine, create_engine
from segserve.pipelines.video.streams import (
    KeyframePolicy,
    KeyframeState,
    KeyframeTracker,
)
from segserve_models.evaluation.metrics import ConfusionMatrix
from segserve_models.synthetic import make_video

HELD_OUT_SEED_BASE = 2_000_000_000  # far from the seeds models/train.py trains on


@dataclass
class Clip:
    tensors: list[np.ndarray]  # (1, 3, H, W) uint8 model inputs
    truth: list[np.ndarray]  # (h, w) uint8 labels at the original size
    box: Letterbox


def make_clips(config: ModelConfig, count: int, frames: int, height: int, width: int, first_seed: int = HELD_OUT_SEED_BASE) -> list[Clip]:
    clips = []
    for seed in range(first_seed, first_seed + count):
        video = make_video(seed, frames, height, width)
        box = Letterbox.fit(height, width, config.input)
        tensors = [box.apply(scene.image, config.input.pad_value)[None] for scene in video.frames]
        clips.append(Clip(tensors, [scene.labels for scene in video.frames], box))
    return clips


class Engines:
    """The model's full graph and its video split, as the server loads them."""

    def __init__(self, repository: Path, name: str):
        model_dir = repository / name
        self.config = load_config(model_dir)
        version_dir = model_dir / str(latest_version(model_dir))
        video = SemanticParameters.model_validate(self.config.parameters).video
        if video is None:
            raise SystemExit(f"{name} has no video split: run python -m segserve_models.video_split --model {name} first")
        self.default_policy = KeyframePolicy(video.max_keyframe_interval, video.keyframe_threshold)
        self.video = video
        self.full: Engine = create_engine(self.config, version_dir, backend="onnxruntime")
        self.parts: dict[str, Engine] = {
            part: create_engine(self.config, version_dir / video.dir / part, backend="onnxruntime") for part in video.parts()
        }

    def per_frame(self, clip: Clip) -> tuple[list[np.ndarray], int]:
        name = self.config.input.name
        return [self.full.infer({name: t})[self.config.output.name][0] for t in clip.tensors], len(clip.tensors)

    def run(self, part: str, **tensors: np.ndarray) -> np.ndarray:
        """One split part on those of ``tensors`` it takes (``VideoSplit.tensors``)."""
        inputs, output = self.video.tensors(part)
        return self.parts[part].infer({name: tensors[name] for name in inputs})[output]

    def keyframed(self, clip: Clip, policy: KeyframePolicy, corrected: bool) -> tuple[list[np.ndarray], int]:
        tracker = KeyframeTracker(policy, KeyframeState(), clip.box)
        labels, keyframes = [], 0
        for tensor in clip.tensors:
            low = self.run("shallow", images=tensor)
            part = "correct" if corrected else "fuse"
            if tracker.observe(low[0]):
                key = {"deep": self.run("deep", low=low), "key_low": low}
                keyframes += 1
                part = "fuse"
            labels.append(self.run(part, low=low, **key)[0])
        return labels, keyframes


def scores(predictions: list[list[np.ndarray]], clips: list[Clip], num_classes: int,
           reference: list[list[np.ndarray]] | None = None) -> tuple[float, float]:
    """(mIoU, flicker) over all clips; predictions at model input size, scored against the
    clips' truth or against ``reference`` predictions (e.g. per-frame inference's)."""
    confusion = ConfusionMatrix(num_classes)
    changed = stable = 0
    truths = reference if reference is not None else [None] * len(clips)
    for labels, clip, truth_labels in zip(predictions, clips, truths):
        previous_pred = previous_truth = None
        frame_truth = clip.truth if truth_labels is None else [clip.box.restore(t) for t in truth_labels]
        for pred, truth in zip(labels, frame_truth):
            pred = clip.box.restore(pred)
            confusion.update(pred, truth)
            if previous_pred is not None:
                same_truth = truth == previous_truth
                stable += int(same_truth.sum())
                changed += int((same_truth & (pred != previous_pred)).sum())
            previous_pred, previous_truth = pred, truth
    return union_miou(confusion), changed / max(stable, 1)


def union_miou(confusion: ConfusionMatrix) -> float:
    """mIoU over the classes present in the truth or the predictions (the video benchmarks'
    definition; ``ConfusionMatrix.results`` counts the truth's classes only)."""
    matrix = confusion.matrix
    intersection = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean())


@dataclass(frozen=True)
class Setting:
    """One row: a keyframe policy (None: the full model on every frame), and whether
    non-keyframes use the model's correction."""

    policy: KeyframePolicy | None
    corrected: bool = False

    def describe(self, has_correction: bool) -> str:
        policy = self.policy
        if policy is None:
            return "per-frame (full model)"
        if policy.threshold is None:
            text = f"k = {policy.interval}" + (" (split, deep on every frame)" if policy.interval == 1 else "")
        else:
            text = f"adaptive (threshold {policy.threshold:g}, max interval {policy.interval})"
        if has_correction and policy.interval > 1:
            text += ", corrected" if self.corrected else ", no correction"
        return text


def segment(engines: Engines, clips: list[Clip], setting: Setting) -> tuple[list[list[np.ndarray]], int, float]:
    """(labels per clip, keyframes, engine seconds) for one pass over the clips."""
    started = time.perf_counter()
    if setting.policy is None:
        results = [engines.per_frame(c) for c in clips]
    else:
        results = [engines.keyframed(c, setting.policy, setting.corrected) for c in clips]
    return [labels for labels, _ in results], sum(k for _, k in results), time.perf_counter() - started


def measure(engines: Engines, clips: list[Clip], settings: list[Setting], repeats: int) -> list[dict]:
    """One row per setting. Timing is interleaved clip by clip (every setting runs a clip
    before the next clip) and each (setting, clip) keeps its best of ``repeats`` passes, so
    the VM's speed drift, which moves over seconds, reaches every row alike."""
    rows, per_frame = [], None
    num_classes = len(engines.config.classes)
    for setting in settings:
        predictions, keyframes, _ = segment(engines, clips, setting)
        miou, flicker = scores(predictions, clips, num_classes)
        if per_frame is None:  # settings[0]: per-frame inference
            per_frame = predictions
        agreement = np.mean([
            (clip.box.restore(a) == clip.box.restore(b)).mean()
            for ours, theirs, clip in zip(predictions, per_frame, clips) for a, b in zip(ours, theirs)
        ])
        row = {"setting": setting, "miou": miou, "flicker": flicker, "keyframes": keyframes, "agreement": float(agreement)}
        row["miou_vs_per_frame"] = scores(predictions, clips, num_classes, per_frame)[0]
        rows.append(row)
    best = np.full((len(settings), len(clips)), np.inf)
    for _ in range(repeats):
        for j, clip in enumerate(clips):
            for i, setting in enumerate(settings):
                best[i, j] = min(best[i, j], segment(engines, [clip], setting)[2])
    frames = sum(len(c.tensors) for c in clips)
    for row, seconds in zip(rows, best.sum(axis=1)):
        row["fps"], row["keyframes"] = frames / seconds, row["keyframes"] / frames
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", required=True, help="a model exported with models.video_split")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=48, help="frames per clip")
    parser.add_argument("--size", default="240x320", help="clip frame size HxW")
    parser.add_argument("--intervals", default="1,2,4,8", help="fixed keyframe intervals to compare (1: the split, deep on every frame)")
    parser.add_argument("--thresholds", default="", help="adaptive thresholds to compare (default: the model's)")
    parser.add_argument("--max-interval", type=int, default=None, help="adaptive: longest gap (default: the model's)")
    parser.add_argument("--repeats", type=int, default=3, help="timing passes per row; the best counts (0: accuracy only, untimed)")
    parser.add_argument("--no-correction", action="store_true",
                        help="a model with a correction: also the rows without it (plain stale features)")
    parser.add_argument("--first-seed", type=int, default=HELD_OUT_SEED_BASE,
                        help="clip seeds start here (calibrate thresholds on other seeds than you report)")
    args = parser.parse_args(argv)

    engines = Engines(args.repository, args.model)
    height, _, width = args.size.partition("x")
    clips = make_clips(engines.config, args.clips, args.frames, int(height), int(width), args.first_seed)
    default = engines.default_policy
    max_interval = args.max_interval or default.interval
    thresholds = [float(t) for t in args.thresholds.split(",") if t] or [default.threshold]
    policies = [KeyframePolicy(int(k)) for k in args.intervals.split(",") if k]
    policies += [KeyframePolicy(max_interval, t) for t in thresholds]
    corrected = "correct" in engines.parts
    settings = [Setting(None)]
    for policy in policies:
        settings += [Setting(policy, corrected)] + ([Setting(policy)] if corrected and args.no_correction and policy.interval > 1 else [])
    if args.repeats:
        measure(engines, clips[:1], [Setting(None), Setting(KeyframePolicy(2), corrected)], 1)  # warm-up: arenas, kernels

    frames = args.clips * args.frames
    print(f"{args.model} ({engines.config.weights.source} weights), input {engines.config.input.height}x{engines.config.input.width}, "
          f"{args.clips} synthetic clips (seeds {args.first_seed}+) x {args.frames} frames of {args.size}, {engines.full.info.device}, batch 1\n")
    print("| policy | keyframes | mIoU | ΔmIoU | flicker | frames/s | speed-up | agreement with per-frame | mIoU vs per-frame |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = measure(engines, clips, settings, args.repeats)
    baseline = rows[0]
    for row in rows:
        speed = f"{row['fps']:.1f} | {row['fps'] / baseline['fps']:.2f}x" if args.repeats else "- | -"
        print(
            f"| {row['setting'].describe(corrected)} | {row['keyframes']:.0%} | {100 * row['miou']:.2f} | {100 * (row['miou'] - baseline['miou']):+.2f} "
            f"| {100 * row['flicker']:.2f}% | {speed} | {100 * row['agreement']:.2f}% | {100 * row['miou_vs_per_frame']:.2f} |"
        )
    timing = f"per clip the best of {args.repeats} passes, interleaved clip by clip" if args.repeats else "not measured (--repeats 0)"
    print(f"\n{frames} frames per row; mIoU in points; frames/s = engine time only, {timing}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
