"""Train the video correction of the bundled LRASPP on synthetic video, on CPU.

    python -m segserve_models.video_correction        # what `make train-video` runs: ~8-9 min on 2 cores

Between keyframes the video split (models/video_split.py) reuses the keyframe's deep
features; where shapes moved, entered or turned since, those features are stale. The
``Correction`` head learns, from the current frame's shallow features and how they changed
since the keyframe, a residual for the stale logits (Accel, Jain et al. 2019, does this with
a second network; here it is a small head on the shallow features the split computes anyway).

Data: 400 synthetic clips (models/synthetic/video.py) of a keyframe and the 16 frames after
it, at several frame sizes, letterboxed as the service does; the frozen model's features are
computed once. A sample is a frame 1..16 after its clip's keyframe; the loss is
cross-entropy of the corrected logits, upsampled to 128x128, against the truth.

Reproducible like models/train.py: fixed seeds and step count, deterministic torch on 2
threads, no timings in the checkpoint, so a rerun gives the same bytes. The checkpoint
records the fingerprint of the weights it was trained for; the export refuses it for others.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")  # see models/train.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from segserve.codecs.geometry import Letterbox  # noqa: E402
from segserve.contract.model_config import InputSpec  # noqa: E402
from segserve.graphs import zoo  # noqa: E402
from segserve_models.export import resolve_weights  # noqa: E402
from segserve_models.synthetic import make_video  # noqa: E402
from segserve_models.train import CHECKPOINT_DIR, IGNORE_LABEL, write_sha256sums  # noqa: E402
from segserve_models.video_split import (  # noqa: E402
    CorrectedFuse,
    Correction,
    Deep,
    Shallow,
    SplitNet,
    fingerprint,
)
from segserve_models.weights import WeightsSpec  # noqa: E402

BASE = "shapes_lraspp"  # the bundled checkpoint the correction is trained for
ARCHITECTURE = "lraspp_mobilenet_v3_large"
INPUT_SIZE = 256  # the size `make models` exports it at (the correction is size-specific only through data)
# Clip seeds: far from models/train.py's scenes and models/video_bench.py's clips (2.0e9 and 2.1e9).
TRAIN_SEED_BASE = 3_000_000_000
CLIP_SIZES = [(240, 320), (320, 240), (256, 256), (180, 320), (360, 480)]  # (h, w), cycled over clips
CLIPS = 400  # clips of 1 keyframe + MAX_GAP frames
STEPS, BATCH, PEAK_LR = 2000, 32, 3e-3
MAX_GAP = 16  # frames after each keyframe: twice the default longest interval with a correction (8)
LOSS_SIZE = 128


def base_net(name: str = BASE) -> nn.Module:
    """The bundled checkpoint's network, as the export builds it."""
    arch = zoo.get(ARCHITECTURE)
    state, classes, _ = resolve_weights(arch, WeightsSpec.parse(f"bundled:{name}"), progress=False)
    net = arch.build(len(classes))
    net.load_state_dict(zoo.strip_training_heads(arch, state))
    return net.eval()


class KeyframeClips:
    """Training data: per synthetic clip, a keyframe's shallow features and high-branch logits
    and the shallow features and truth of the ``gaps`` frames after it.

    Many short clips rather than a few long ones: a correction trained on 64 clips of 48
    frames learned those clips' shapes (+7 mIoU on them, -4.6 on held-out clips), so every
    clip brings new shapes, and costs one deep run (the keyframe) plus ``gaps`` shallow runs.
    Features are float16 (half the memory); truth is at LOSS_SIZE, IGNORE_LABEL in the padding.
    """

    def __init__(self, split: SplitNet, seeds: range, gaps: int, size: int, batch: int = 4):
        spec = InputSpec(height=size, width=size)
        shallow, deep = Shallow(split).eval(), Deep(split).eval()
        stride = max(1, size // LOSS_SIZE)
        key_low, key_high, low, labels = [], [], [], []
        seeds = list(seeds)
        for start in range(0, len(seeds), batch):  # a few clips per forward pass
            images, truth = [], []
            for i, seed in enumerate(seeds[start : start + batch], start):
                h, w = CLIP_SIZES[i % len(CLIP_SIZES)]
                video = make_video(seed, gaps + 1, h, w)
                box = Letterbox.fit(h, w, spec)
                images += [box.apply(s.image, spec.pad_value) for s in video.frames]
                clip_truth = torch.full((gaps, size, size), IGNORE_LABEL, dtype=torch.uint8)
                frames_truth = torch.from_numpy(np.stack([s.labels for s in video.frames[1:]]))[:, None].float()
                clip_truth[:, : box.content_h, : box.content_w] = F.interpolate(
                    frames_truth, size=(box.content_h, box.content_w), mode="nearest"
                )[:, 0].byte()
                truth.append(clip_truth[:, stride // 2 :: stride, stride // 2 :: stride])
            with torch.no_grad():
                clips_low = shallow(torch.from_numpy(np.stack(images))).unflatten(0, (-1, gaps + 1))
                key_high.append(split.classifier(deep(clips_low[:, 0])))
            key_low.append(clips_low[:, 0].half())
            low.append(clips_low[:, 1:].half())
            labels += truth
        self.key_low, self.key_high = torch.cat(key_low), torch.cat(key_high)
        self.low, self.labels = torch.cat(low), torch.stack(labels)
        self.size = size

    def __len__(self) -> int:
        return self.low.shape[0]


def train(split: SplitNet, data: KeyframeClips, steps: int, seed: int, width: int = 16) -> tuple[Correction, float]:
    """(trained correction, mean loss of the last 50 steps); the network stays as it is (frozen)."""
    for parameter in split.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(seed)
    correction = Correction(data.low.shape[2], split.num_classes, width)
    fuse = CorrectedFuse(split, correction, data.size, data.size)  # frozen classifiers + the correction being trained
    optimizer = torch.optim.AdamW(correction.parameters(), lr=PEAK_LR, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    clips, gaps = data.low.shape[:2]
    recent: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:  # cosine decay
            group["lr"] = 0.5 * PEAK_LR * (1 + np.cos(np.pi * step / steps))
        clip = torch.from_numpy(rng.integers(0, clips, BATCH))
        frame = torch.from_numpy(rng.integers(0, gaps, BATCH))  # frame k of a clip is k + 1 after its keyframe
        logits = fuse.corrected_logits(data.low[clip, frame].float(), data.key_high[clip], data.key_low[clip].float())
        loss = F.cross_entropy(F.interpolate(logits, size=data.labels.shape[-2:], mode="bilinear"), data.labels[clip, frame].long(), ignore_index=IGNORE_LABEL)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 100 == 0:
            print(f"step {step:5d}  loss {np.mean(recent):.4f}  {time.perf_counter() - started:6.1f}s", flush=True)
    return correction.eval(), float(np.mean(recent))


def save(path: Path, correction: Correction, net: nn.Module, info: dict) -> None:
    torch.save(
        {
            "state_dict": {k: v.detach().clone() for k, v in correction.state_dict().items()},
            "low_channels": (correction.mix.in_channels - correction.out.out_channels) // 2,
            "num_classes": correction.out.out_channels,
            "width": correction.out.in_channels,
            "base_fingerprint": fingerprint(net),
            "train": info,
        },
        path,
    )
    print(f"saved {path} ({path.stat().st_size / 1e3:.0f} KB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR)
    parser.add_argument("--clips", type=int, default=CLIPS)
    parser.add_argument("--gaps", type=int, default=MAX_GAP, help="frames after the keyframe per clip")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    started = time.perf_counter()
    net = base_net()
    split = SplitNet(ARCHITECTURE, net)
    data = KeyframeClips(split, range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.clips), args.gaps, INPUT_SIZE)
    print(f"features of {args.clips} clips x 1 + {args.gaps} frames: {time.perf_counter() - started:.0f}s", flush=True)
    correction, final_loss = train(split, data, args.steps, args.seed)
    info = {"base": f"{BASE}.pth", "clips": args.clips, "gaps": args.gaps, "steps": args.steps, "seed": args.seed,
            "batch": BATCH, "peak_lr": PEAK_LR, "final_loss": round(final_loss, 4)}
    save(args.out / f"{BASE}_video.pth", correction, net, info)
    write_sha256sums(args.out)
    print(f"total wall {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
