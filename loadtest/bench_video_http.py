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

Where the time goes, in the same run: each round also times every part of the split alone
(the model's own ONNX Runtime sessions, batch 1, one thread, on a frame of the clips), which
gives the speed-up the engine alone would allow at each row's keyframe share, and the codec
floor per frame (decode to model inputs, restore, RLE, JSON, one thread), which every frame
pays besides: with it, the speed-up a server with no other overhead could give; and the
server's own metrics give each part's engine time per frame inside the server (the batches'
run time, wall clock, so it includes time a part's thread waited for a core).
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
from segserve.contract.video import SemanticParameters
from segserve_loadtest.server_metrics import parse_samples, sum_matching
from segserve_loadtest.bench_overhead import codec_pipeline
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


class SplitParts:
    """The split's parts alone: the model's own ONNX Runtime engines, one instance, batch 1."""

    def __init__(self, repository: Path, model: str, clip: "Clip", height: int, width: int):
        import av

        from segserve.codecs.geometry import Letterbox
        from segserve.pipelines.video.semantic import load_split
        from segserve.repository import scan

        entry = next(e for e in scan(repository) if e.config.name == model)
        config = entry.config
        self.split = SemanticParameters.model_validate(config.parameters).video
        if self.split is None:
            raise SystemExit(f"{model} has no video split (export it with --video-split)")
        self.engines = {part: engines[0] for part, engines in load_split(config.model_copy(update={"instances": 1}),
                                                                          entry.version_dir, self.split).items()}
        with av.open(io.BytesIO(clip.mp4)) as container:
            rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
        box = Letterbox.fit(height, width, config.input)
        tensors = {"images": box.apply(rgb, config.input.pad_value)[None]}
        self.feeds = {}
        for part in self.split.parts():  # in the order a keyframe runs them
            inputs, output = self.split.tensors(part)
            self.feeds[part] = {name: tensors.get(name, tensors.get("low")) for name in inputs}  # key_low: the frame's own
            tensors[output] = self.engines[part].infer(self.feeds[part])[output]
        self.labels = tensors[self.split.tensors("fuse")[1]][0]  # the first frame's, at model resolution
        self.codecs = codec_pipeline(config)

    def time_ms(self, seconds_per_part: float) -> dict[str, float]:
        """Each part's ms per call, the best of 3 windows."""
        result = {}
        for part, engine in self.engines.items():
            best = float("inf")
            for _ in range(3):
                calls, started = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < seconds_per_part / 3 or calls < 3:
                    engine.infer(self.feeds[part])
                    calls += 1
                best = min(best, 1000 * elapsed / calls)
            result[part] = best
        return result

    def codec_ms(self, clips: list["Clip"]) -> float:
        """The codec floor per frame, one thread, the best of 3 passes over ``clips``: the chunk decoded
        to model inputs and each frame's answer encoded (restore, RLE, JSON) as the server does."""
        from segserve.codecs.jsonbytes import dumps
        from segserve.pipelines.base import OutputFormat, Placement
        from segserve.pipelines.video.chunks import prepare_video

        best = float("inf")
        for _ in range(3):
            frames, started = 0, time.perf_counter()
            for clip in clips:
                chunk = prepare_video(clip.mp4, self.codecs, max_frames=10_000, frame_stride=1,
                                      max_pixels=self.codecs.context.max_image_pixels)
                placement = Placement(chunk.height, chunk.width, chunk.geometry)
                for _ in chunk.inputs:
                    dumps(self.codecs.encode(self.labels, placement, None, OutputFormat.json).body, floats=False)
                frames += len(chunk.inputs)
            best = min(best, 1000 * (time.perf_counter() - started) / frames)
        return best

    def frame_ms(self, parts_ms: dict[str, float], keyframe_share: float) -> float:
        """The engine's ms per frame at a keyframe share: shallow always, deep + fuse on keyframes, the
        correction (or the fuse on stale features) on the others."""
        other = parts_ms.get("correct", parts_ms["fuse"])
        return (parts_ms["shallow"] + keyframe_share * (parts_ms["deep"] + parts_ms["fuse"])
                + (1 - keyframe_share) * other)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def part_engine_ms(before: dict, after: dict, model: str, parts: list[str]) -> dict[str, float]:
    """Each part's batches' total run time between two scrapes, ms (wall clock): the per-request compute
    histogram counts a batch once per request in it, so its sum over the mean batch size."""
    def change(name: str, label: str) -> float:
        return sum_matching(after, name, label) - sum_matching(before, name, label)

    result = {}
    for part in parts:
        label = f"{model}/{part}"
        requests = change("segserve_compute_time_seconds_count", label)
        batches = change("segserve_batch_size_count", label)
        result[part] = 1000 * change("segserve_compute_time_seconds_sum", label) * batches / requests if requests else 0.0
    return result


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
    alone_rounds: list[dict[str, float]] = []
    codec_rounds: list[float] = []
    parts = SplitParts(args.repository, args.model, clips[0], height, width)
    part_names = parts.split.parts()
    with SegserveProcess(args.repository, models=[args.model]) as server, httpx.Client(base_url=server.url) as metrics:
        send_clips(server.url, args.model, clips[:1], rows[0], 1, "warm-up")
        for round_index in range(args.rounds):
            alone_rounds.append(parts.time_ms(args.part_seconds))
            codec_rounds.append(parts.codec_ms(clips))
            print(f"round {round_index + 1} parts alone (ms per call): "
                  + ", ".join(f"{p} {v:.2f}" for p, v in alone_rounds[-1].items())
                  + f"; codec floor {codec_rounds[-1]:.2f} ms per frame", flush=True)
            for row_index, row in enumerate(rows):
                cpu_before = tree_cpu_s(server.process.pid)
                scraped = parse_samples(metrics.get("/metrics").text)
                answers, wall_s = send_clips(server.url, args.model, clips, row, args.streams, f"r{round_index}-{row_index}")
                cpu_s = tree_cpu_s(server.process.pid) - cpu_before
                engine_ms = part_engine_ms(scraped, parse_samples(metrics.get("/metrics").text), args.model, part_names)
                keyframes = sum(a["keyframes"] for a in answers)
                results[row.name].append({"frames_per_s": frames / wall_s, "cpu_ms_per_frame": cpu_s * 1000 / frames,
                                          "keyframe_share": keyframes / frames,
                                          "engine_ms_per_frame": {p: v / frames for p, v in engine_ms.items()}})
                print(f"round {round_index + 1} {row.name}: {frames / wall_s:.1f} frames/s, "
                      f"{cpu_s * 1000 / frames:.2f} ms CPU/frame, keyframes {keyframes}/{frames}", flush=True)
                if row.name not in predictions:
                    predictions[row.name] = [[label_map(f["segments"], height, width) for f in a["frames"]] for a in answers]
                    policies[row.name] = answers[0]["keyframe_policy"]
    parts.close()
    alone = {p: statistics.median(r[p] for r in alone_rounds) for p in part_names}
    base = rows[0].name
    base_fps = statistics.median(r["frames_per_s"] for r in results[base])
    base_miou = miou(predictions[base], clips, len(config.classes))
    codec = statistics.median(codec_rounds)
    base_engine = parts.frame_ms(alone, 1.0)
    table = []
    for row in rows:
        runs = results[row.name]
        fps = statistics.median(r["frames_per_s"] for r in runs)
        row_miou = miou(predictions[row.name], clips, len(config.classes))
        share = runs[0]["keyframe_share"]
        table.append({
            "row": row.name, "policy": policies[row.name], "frames_per_s": fps, "speedup": fps / base_fps,
            "cpu_ms_per_frame": statistics.median(r["cpu_ms_per_frame"] for r in runs),
            "keyframe_share": share, "miou": row_miou, "delta_miou": row_miou - base_miou,
            "engine_alone_ms_per_frame": parts.frame_ms(alone, share),
            "engine_alone_speedup": base_engine / parts.frame_ms(alone, share),
            # what a server with no overhead beyond the codecs could give: every frame also pays its decode and encode
            "with_codecs_speedup": (base_engine + codec) / (parts.frame_ms(alone, share) + codec),
            "server_engine_ms_per_frame": {p: statistics.median(r["engine_ms_per_frame"][p] for r in runs) for p in part_names},
            "rounds": runs,
        })
    return {
        "command": "python -m segserve_loadtest.bench_video_http " + " ".join(args.argv),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_count()} CPUs, {platform.platform()}",
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "model": args.model, "clips": args.clips, "frames_per_clip": args.frames, "size": f"{width}x{height}",
        "streams": args.streams, "rounds": args.rounds, "parts_alone_ms": alone, "codec_floor_ms_per_frame": codec,
        "table": table,
    }


def markdown(result: dict) -> str:
    lines = [
        f"- command: `{result['command']}`, commit `{result['commit']}`, {result['when']}",
        f"- machine: {result['machine']}; load average at the end {', '.join(result['load_average'])}",
        f"- {result['clips']} held-out synthetic clips of {result['frames_per_clip']} frames at {result['size']}, "
        f"H.264 mp4 (crf 18), one chunk and one stream per clip, {result['streams']} clients at once; "
        f"model `{result['model']}`; medians of {result['rounds']} interleaved rounds",
        "",
        "| row | keyframe policy | keyframes | frames/s | vs per-frame | engine alone would give | engine + codec floor would give "
        "| server CPU ms/frame | mIoU | ΔmIoU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["table"]:
        policy = r["policy"]
        text = f"interval {policy['interval']}" + (f", threshold {policy['threshold']}" if policy.get("threshold") is not None else "")
        lines.append(f"| {r['row']} | {text} | {r['keyframe_share']:.0%} | {r['frames_per_s']:.1f} | {r['speedup']:.2f}x "
                     f"| {r['engine_alone_speedup']:.2f}x | {r['with_codecs_speedup']:.2f}x | {r['cpu_ms_per_frame']:.2f} | {r['miou'] * 100:.1f} | {r['delta_miou'] * 100:+.2f} |")
    alone = result["parts_alone_ms"]
    parts = list(alone)
    lines += [
        "",
        f"Codec floor per frame (the chunk decoded to model inputs, each frame's answer restored, RLE-encoded and written as "
        f"JSON, one thread, the rounds' median): {result['codec_floor_ms_per_frame']:.2f} ms. \"engine + codec floor would "
        "give\" is the speed-up of a server with no overhead beyond it.",
        "",
        "Engine ms per frame by part: alone (batch 1, one thread, the rounds' median), and inside the server (its batches' run "
        "time from /metrics, wall clock, per frame of the row):",
        "",
        "| row | " + " | ".join(parts) + " | engine total | server CPU |",
        "|---|" + "---:|" * (len(parts) + 2),
        "| parts alone, per call | " + " | ".join(f"{alone[p]:.2f}" for p in parts) + " | | |",
    ]
    for r in result["table"]:
        inside = r["server_engine_ms_per_frame"]
        lines.append(f"| {r['row']} | " + " | ".join(f"{inside[p]:.2f}" for p in parts)
                     + f" | {sum(inside.values()):.2f} (alone: {r['engine_alone_ms_per_frame']:.2f}) | {r['cpu_ms_per_frame']:.2f} |")
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
    parser.add_argument("--part-seconds", type=float, default=1.5, help="each split part timed alone for this long per round")
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
