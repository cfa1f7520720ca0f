"""Keyframe feature reuse end to end: mp4 chunks POSTed to `/segment/video` (`make bench-video-http`).

    python -m segserve_loadtest.bench_video_http --repository model_repository --model shapes_lraspp

What models/video_bench.py measures on the engine alone, through the whole server: held-out
synthetic clips (models/synthetic, the seeds video_bench holds out) encoded as H.264 mp4, one
chunk per clip and one stream per clip, sent by ``--streams`` clients at once to a real
`segserve serve` process, answered as JSON (COCO RLE per class), decoded with pycocotools and
scored at the frames' size against the synthetic truth. Rows, interleaved round by round so
this machine's drift hits them alike:

* per-frame: ``keyframe_interval=1``, every frame a keyframe (the full model on every frame,
  through the split: shallow, deep and fuse),
* the model's default policy (adaptive keyframes where its config says so),
* each ``--intervals`` value as a fixed keyframe interval.

frames/s is frames answered over wall time (upload, decode, batching, engine, restore, RLE and
JSON included); server CPU ms/frame from /proc (the server's whole process tree). The median
round counts. mIoU over every frame of every clip; ΔmIoU against per-frame.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from pycocotools import mask as mask_utils

from segserve.contract.model_config import load_config
from segserve_loadtest.bench_peers import LOCK_FILE, cpu_count, tree_cpu_s
from segserve_loadtest.server import SegserveProcess
from segserve_models.evaluation.metrics import ConfusionMatrix
from segserve_models.video_bench import HELD_OUT_SEED_BASE, union_miou
from segserve_models.synthetic import make_video

VIDEO_FPS = 10


@dataclass(frozen=True)
class Clip:
    mp4: bytes
    truth: list[np.ndarray]  # (h, w) uint8 labels per frame


@dataclass(frozen=True)
class Row:
    name: str
    params: dict[str, str]


def make_clips(count: int, frames: int, height: int, width: int) -> list[Clip]:
    import av

    clips = []
    for seed in range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + count):
        video = make_video(seed, frames, height, width)
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=VIDEO_FPS)
            stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
            stream.options = {"crf": "18"}  # near-lossless: the codec's blur is not what is measured
            for scene in video.frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(scene.image, format="rgb24")))
            out.mux(stream.encode())
        clips.append(Clip(buffer.getvalue(), [scene.labels for scene in video.frames]))
    return clips


def label_map(segments: list[dict], height: int, width: int) -> np.ndarray:
    labels = np.zeros((height, width), np.uint8)
    for segment in segments:
        rle = {"size": segment["mask"]["size"], "counts": segment["mask"]["counts"].encode()}
        labels[mask_utils.decode(rle).view(bool)] = segment["class_id"]
    return labels


def miou(predictions: list[list[np.ndarray]], clips: list[Clip], num_classes: int) -> float:
    """As models/video_bench.py scores its rows, at the frames' size."""
    confusion = ConfusionMatrix(num_classes)
    for labels, clip in zip(predictions, clips, strict=True):
        for pred, truth in zip(labels, clip.truth, strict=True):
            confusion.update(pred, truth)
    return union_miou(confusion)


def send_clips(url: str, model: str, clips: list[Clip], row: Row, streams: int, tag: str) -> tuple[list[dict], float]:
    """Every clip as one chunk of its own stream, ``streams`` at a time: (answers, wall seconds)."""
    with httpx.Client(base_url=url, timeout=300) as client:
        def one(i: int) -> dict:
            params = {"model": model, "stream_id": f"{tag}-{i}", "sequence": 0, **row.params}
            r = client.post("/segment/video", content=clips[i].mp4, params=params, headers={"Content-Type": "video/mp4"})
            r.raise_for_status()
            return r.json()

        started = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            answers = list(pool.map(one, range(len(clips))))
        return answers, time.perf_counter() - started


def run(args: argparse.Namespace) -> dict:
    config = load_config(args.repository / args.model)
    height, width = args.height, args.width
    clips = make_clips(args.clips, args.frames, height, width)
    rows = [Row("per-frame (keyframe_interval=1)", {"keyframe_interval": "1"}), Row("model default policy", {})]
    rows += [Row(f"keyframe_interval={k}", {"keyframe_interval": str(k)}) for k in args.intervals]
    frames = args.clips * args.frames
    results: dict[str, list[dict]] = {row.name: [] for row in rows}
    predictions: dict[str, list[list[np.ndarray]]] = {}
    policies: dict[str, dict] = {}
    with SegserveProcess(args.repository, models=[args.model]) as server:
        send_clips(server.url, args.model, clips[:1], rows[0], 1, "warm-up")
        for round_index in range(args.rounds):
            for row_index, row in enumerate(rows):
                cpu_before = tree_cpu_s(server.process.pid)
                answers, wall_s = send_clips(server.url, args.model, clips, row, args.streams, f"r{round_index}-{row_index}")
                cpu_s = tree_cpu_s(server.process.pid) - cpu_before
                keyframes = sum(a["keyframes"] for a in answers)
                results[row.name].append({"frames_per_s": frames / wall_s, "cpu_ms_per_frame": cpu_s * 1000 / frames,
                                          "keyframe_share": keyframes / frames})
                print(f"round {round_index + 1} {row.name}: {frames / wall_s:.1f} frames/s, "
                      f"{cpu_s * 1000 / frames:.2f} ms CPU/frame, keyframes {keyframes}/{frames}", flush=True)
                if row.name not in predictions:
                    predictions[row.name] = [[label_map(f["segments"], height, width) for f in a["frames"]] for a in answers]
                    policies[row.name] = answers[0]["keyframe_policy"]
    base = rows[0].name
    base_fps = statistics.median(r["frames_per_s"] for r in results[base])
    base_miou = miou(predictions[base], clips, len(config.classes))
    table = []
    for row in rows:
        runs = results[row.name]
        fps = statistics.median(r["frames_per_s"] for r in runs)
        row_miou = miou(predictions[row.name], clips, len(config.classes))
        table.append({
            "row": row.name, "policy": policies[row.name], "frames_per_s": fps, "speedup": fps / base_fps,
            "cpu_ms_per_frame": statistics.median(r["cpu_ms_per_frame"] for r in runs),
            "keyframe_share": runs[0]["keyframe_share"], "miou": row_miou, "delta_miou": row_miou - base_miou, "rounds": runs,
        })
    return {
        "command": "python -m segserve_loadtest.bench_video_http " + " ".join(args.argv),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_count()} CPUs, {platform.platform()}",
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "model": args.model, "clips": args.clips, "frames_per_clip": args.frames, "size": f"{width}x{height}",
        "streams": args.streams, "rounds": args.rounds, "table": table,
    }


def markdown(result: dict) -> str:
    lines = [
        f"- command: `{result['command']}`, commit `{result['commit']}`, {result['when']}",
        f"- machine: {result['machine']}; load average at the end {', '.join(result['load_average'])}",
        f"- {result['clips']} held-out synthetic clips of {result['frames_per_clip']} frames at {result['size']}, "
        f"H.264 mp4 (crf 18), one chunk and one stream per clip, {result['streams']} clients at once; "
        f"model `{result['model']}`; medians of {result['rounds']} interleaved rounds",
        "",
        "| row | keyframe policy | keyframes | frames/s | vs per-frame | server CPU ms/frame | mIoU | ΔmIoU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["table"]:
        policy = r["policy"]
        text = f"interval {policy['interval']}" + (f", threshold {policy['threshold']}" if policy.get("threshold") is not None else "")
        lines.append(f"| {r['row']} | {text} | {r['keyframe_share']:.0%} | {r['frames_per_s']:.1f} | {r['speedup']:.2f}x "
                     f"| {r['cpu_ms_per_frame']:.2f} | {r['miou'] * 100:.1f} | {r['delta_miou'] * 100:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import fcntl
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="shapes_lraspp")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames", type=int, default=48, help="frames per clip (one chunk)")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--streams", type=int, default=2, help="clips sent at once (one stream each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--intervals", type=lambda s: [int(v) for v in s.split(",") if v], default=[], help="fixed intervals too, e.g. 4,8")
    parser.add_argument("--out", type=Path, default=Path("out/bench_video_http"))
    parser.add_argument("--no-lock", action="store_true", help=f"do not wait for {LOCK_FILE} (tests)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    with open(LOCK_FILE, "w") as lock:
        if not args.no_lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_video_http.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (args.out / "bench_video_http.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
