"""`segserve segment`: files, folders, globs or videos -> label-map PNGs, overlays and JSON.

    segserve segment photos/ --out out/                 # every image under photos/
    segserve segment 'shots/*.jpg' clip.mp4 --out out/ --model shapes_maskrcnn -o score_threshold=0.7

For each image ``out/<name>.png`` (the class-id map, palettised: pixel value = class id),
``out/<name>.overlay.jpg`` (the masks blended in) and ``out/<name>.json`` (the server's answer),
written in that order, so a ``.json`` says the image is done: a second run skips it (resume).
A video gives ``out/<name>/<frame>.png`` and ``.overlay.jpg`` per frame, and ``out/<name>.json``.
At the end ``out/results.json`` holds every input's answer and every failure with its reason;
the summary (images/s, failures) goes to stderr, and the exit status is 1 when anything failed.

Registered as a ``segserve.commands`` entry point: ``segserve.cli`` never imports the client.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from segserve.codecs.labels import encode_label_png
from segserve.codecs.overlay import encode_jpeg

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class Job:
    source: Path
    name: str  # the outputs' path under --out, without suffix
    video: bool


@dataclass
class Summary:
    done: int = 0  # images (or video frames) segmented by this run
    skipped: int = 0  # inputs done by an earlier run
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        lines = [f"segmented {self.done} image(s) in {self.seconds:.1f} s ({rate:.1f} images/s); "
                 f"{self.skipped} skipped (done before); {len(self.failures)} failed"]
        lines += [f"  {name}: {reason}" for name, reason in self.failures.items()]
        return "\n".join(lines)


def find_jobs(inputs: list[str]) -> list[Job]:
    """Files as given, folders walked (images and videos, sorted), globs expanded."""
    from segserve.client.images import IMAGE_SUFFIXES
    from segserve.client.video import VIDEO_SUFFIXES

    def job(path: Path, name: Path) -> Job | None:
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return Job(path, str(name.with_suffix("")), True)
        if suffix in IMAGE_SUFFIXES:
            return Job(path, str(name.with_suffix("")), False)
        return None

    jobs: list[Job] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            jobs += [j for p in sorted(path.rglob("*")) if p.is_file() and (j := job(p, p.relative_to(path)))]
        elif path.is_file():
            jobs.append(job(path, Path(path.name)) or Job(path, path.stem, False))  # named by hand: try it as an image
        else:
            matches = sorted(Path(m) for m in glob.glob(given, recursive=True))
            if not matches:
                raise SystemExit(f"segserve segment: {given}: no such file, folder or matching glob")
            jobs += [j for p in matches if p.is_file() and (j := job(p, Path(p.name)))]
    return jobs


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_result(out: Path, name: str, result, record: dict) -> None:
    """The PNG and the overlay first, the JSON last: the JSON marks the image done. A keypoint
    model's answer has no masks, so no label-map PNG."""
    if result.task != "keypoints":
        write_atomic(out / f"{name}.png", encode_label_png(result.label_map))
    write_atomic(out / f"{name}.overlay.jpg", encode_jpeg(result.overlay()))
    if record is not None:
        write_atomic(out / f"{name}.json", json.dumps(record).encode())


def parse_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"segserve segment: -o takes KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def progress(total: int | None, enabled: bool, unit: str, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def run_images(client, jobs: list[Job], out: Path, args, options: dict, summary: Summary, show: bool) -> None:
    from segserve.client.errors import SegserveError

    with progress(len(jobs), show, "img", "images") as bar:
        results = client.segment_many((j.source for j in jobs), args.model, concurrency=args.concurrency,
                                      return_exceptions=True, **options)
        for job, result in zip(jobs, results):
            if isinstance(result, SegserveError):
                summary.failures[str(job.source)] = str(result)
            else:
                try:
                    save_result(out, job.name, result, {"source": str(job.source), **result.raw})
                    summary.done += 1
                except (OSError, ValueError) as exc:
                    summary.failures[str(job.source)] = f"cannot write the outputs: {exc}"
            bar.update()


def run_video(client, job: Job, out: Path, args, options: dict, summary: Summary, show: bool) -> None:
    stream = client.stream(job.source, args.model, chunk_frames=args.chunk_frames, keyframe_threshold=args.keyframe_threshold,
                           keyframe_interval=args.keyframe_interval, **options)
    frames = []
    with progress(None, show, "frame", job.name) as bar:
        for frame in stream:
            save_result(out, f"{job.name}/{frame.index:06d}", frame, None)
            frames.append({"index": frame.index, "pts": frame.pts, "keyframe": frame.keyframe, **frame.raw})
            summary.done += 1
            bar.update()
    record = {"source": str(job.source), "stream": vars(stream.stats), "frames": frames}
    write_atomic(out / f"{job.name}.json", json.dumps(record).encode())


def cmd_segment(args: argparse.Namespace) -> int:
    from segserve.client import Client, RetryPolicy, SegserveError

    out: Path = args.out
    jobs = find_jobs(args.inputs)
    if not jobs:
        raise SystemExit("segserve segment: no image or video among the inputs")
    options = parse_options(args.option)
    summary = Summary()
    todo = [j for j in jobs if args.overwrite or not (out / f"{j.name}.json").is_file()]
    summary.skipped = len(jobs) - len(todo)
    show = not args.no_progress
    api_key = args.api_key_file.read_text().strip() if args.api_key_file else None
    started = time.perf_counter()
    with Client(args.url, api_key=api_key, timeout_ms=args.timeout_ms, retry=RetryPolicy(attempts=args.retries + 1)) as client:
        run_images(client, [j for j in todo if not j.video], out, args, options, summary, show)
        for job in (j for j in todo if j.video):
            try:
                run_video(client, job, out, args, options, summary, show)
            except (SegserveError, OSError, ValueError) as exc:  # av raises OSError subclasses for unreadable files
                summary.failures[str(job.source)] = str(exc)
    summary.seconds = time.perf_counter() - started
    write_results(out, jobs, summary)
    print(summary.text(), file=sys.stderr)
    return 1 if summary.failures else 0


def write_results(out: Path, jobs: list[Job], summary: Summary) -> None:
    """Every input's answer (this run's and earlier runs'), and this run's failures."""
    answers = {}
    for job in jobs:
        record = out / f"{job.name}.json"
        if record.is_file():
            answers[job.name] = json.loads(record.read_text())
    body = {"results": answers, "failures": summary.failures,
            "summary": {"segmented": summary.done, "skipped": summary.skipped, "seconds": round(summary.seconds, 3)}}
    write_atomic(out / RESULTS_FILE, json.dumps(body, indent=1).encode())


def add_segment(sub) -> None:
    """The `segserve segment` command (entry point ``segserve.commands``: segment)."""
    from segserve.client.calls import DEFAULT_URL  # fails here, not at run time, without httpx (segserve[client])

    parser = sub.add_parser("segment", help="segment images or videos through a segserve server (label maps, overlays, JSON)",
                            description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image or video files, folders, or globs (quoted: 'photos/*.jpg')")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--url", default=os.environ.get("SEGSERVE_URL", DEFAULT_URL), help=f"server (env SEGSERVE_URL, default {DEFAULT_URL})")
    parser.add_argument("--model", help="model name (default: the server's)")
    parser.add_argument("--concurrency", type=int, default=4, help="images in flight at once (default 4)")
    parser.add_argument("--timeout-ms", type=int, help="each request's deadline, retries included")
    parser.add_argument("--retries", type=int, default=4, help="tries again after a 503 or a connection error (default 4)")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a model option, e.g. -o score_threshold=0.7 (repeatable)")
    parser.add_argument("--chunk-frames", type=int, default=16, help="video: frames per chunk of the stream (default 16)")
    parser.add_argument("--keyframe-interval", type=int, help="video: a keyframe at least every N frames")
    parser.add_argument("--keyframe-threshold", type=float, help="video: adaptive keyframes on this feature change")
    parser.add_argument("--api-key-file", type=Path, help="file holding the API key (or env SEGSERVE_API_KEY)")
    parser.add_argument("--overwrite", action="store_true", help="segment again what earlier runs did (default: skip it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_segment)
