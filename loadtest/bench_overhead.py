"""Serving overhead: a model that does almost nothing, against the codec floor (`make bench-overhead`).

On a GPU the engine is fast and the server around it becomes the limit. This measures that
limit on any machine by serving a trivial model and comparing its throughput with the work
no server can skip for the same request, measured in the same run:

1. The trivial model, generated here (never committed as a binary): an ONNX graph
   (IR 9, opset 18) taking uint8 NCHW images to ``labels`` = channel 0 > 127, 256x256,
   ``max_batch_size: 8``, a 6-line config.yaml, in a temporary model repository.
2. The codec floor, in-process, one thread, in a loop, times the cores: JPEG decode at 1/2
   draft scale, letterbox to 256, restore to 640x480, two COCO RLEs (pycocotools, on
   full-size masks), JSON -- the definition of issue 12, with the project's own codec
   functions. A second figure runs the codec path the server itself runs today (decode +
   letterbox hop, encode + JSON), for reference.
3. The service: `segserve serve` on the trivial model, once per ``--workers`` value (1 = one
   process; 2 = an engine process and two HTTP workers: segserve.supervisor), driven by
   ``ab -n 3000 -c 32 -k -l`` with a 640x480 JPEG, in rounds, each paired with a floor
   measurement right before it (this VM's speed drifts) and serving each server in turn;
   the median round is the headline: service req/s / floor req/s. Server CPU counts every
   process of the server.
4. ``--profile``: py-spy (a dev tool: ``pip install py-spy``) records the server under the
   same load with ``--gil`` (GIL-held share of wall time, top holders) and ``--threads``.

    python -m segserve_loadtest.bench_overhead --out docs/bench [--rounds 3] [--workers 1,2] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segserve_loadtest.ab import run_ab, segment_url
from segserve_loadtest.bench_peers import cpu_count
from segserve_loadtest.payloads import Payload, synthetic_scene
from segserve_loadtest.server import SegserveProcess

MODEL = "trivial"
SIZE = 256
MAX_BATCH_SIZE = 8
CONFIG_YAML = f"""\
name: {MODEL}
task: semantic
classes: [dark, bright]
input: {{height: {SIZE}, width: {SIZE}}}
output: {{name: labels, kind: labels}}
max_batch_size: {MAX_BATCH_SIZE}
"""


def build_trivial_model(repository: Path) -> Path:
    """The trivial model's folder in ``repository``: ``labels = images[:, 0] > 127`` as uint8."""
    import onnx
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, SIZE, SIZE])
    labels = helper.make_tensor_value_info("labels", TensorProto.UINT8, ["batch", SIZE, SIZE])
    nodes = [
        helper.make_node("Gather", ["images", "channel"], ["red"], axis=1),
        helper.make_node("Greater", ["red", "threshold"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["labels"], to=TensorProto.UINT8),
    ]
    constants = [helper.make_tensor("channel", TensorProto.INT64, [], [0]), helper.make_tensor("threshold", TensorProto.UINT8, [], [127])]
    graph = helper.make_graph(nodes, MODEL, [images], [labels], initializer=constants)
    # IR 9 / opset 18: what this onnxruntime accepts (it rejects the IR onnx writes by default).
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 18)], producer_name="segserve_loadtest")
    onnx.checker.check_model(model)
    folder = repository / MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.yaml").write_text(CONFIG_YAML)
    return folder


def photo() -> Payload:
    """The 640x480 JPEG `make bench` sends."""
    buffer = io.BytesIO()
    synthetic_scene(640, 480, seed=0).save(buffer, format="JPEG", quality=85)
    return Payload("photo_640x480.jpg", "image/jpeg", buffer.getvalue())


# -- the codec floor ---------------------------------------------------------------------
def floor_steps(data: bytes):
    """(reference, served) for the trivial model (``codec_floor``)."""
    from segserve.contract.model_config import load_config

    with tempfile.TemporaryDirectory(prefix="segserve-floor-") as tmp:
        config = load_config(build_trivial_model(Path(tmp)))
    return codec_floor(data, config, lambda tensor: (tensor[0] > 127).astype(np.uint8))


def codec_floor(data: bytes, config, labels_of):
    """(reference, served): one request's unavoidable work as issue 12 defines it, and the
    codec work the server runs for it today, each a no-argument callable, for a semantic model
    ``config`` whose engine ``labels_of`` stands in for: its (3, H, W) input -> (H, W) labels."""
    from segserve.codecs.geometry import Letterbox
    from segserve.codecs.image import decode_image
    from segserve.codecs.masks import encode_rle
    from segserve.pipelines.base import Decoded, ImageResult, Placement, Timing, render_json

    spec = config.input
    # The served path: the pipeline's own decode and encode hooks, and the renderer.
    pipeline = codec_pipeline(config)
    max_pixels = pipeline.context.max_image_pixels

    def draft(h: int, w: int) -> tuple[int, int]:
        return Letterbox.fit(h, w, spec).min_decode_size()

    def reference() -> bytes:
        image = decode_image(data, max_pixels, draft)
        box = Letterbox.fit(image.height, image.width, spec)
        full = box.restore(labels_of(box.apply(image.rgb, spec.pad_value)))
        rles = encode_rle(np.stack([full == c for c in np.unique(full)], axis=-1))
        return json.dumps({"segments": rles}, separators=(",", ":")).encode()

    def served() -> bytes:
        decoded: Decoded = pipeline.decode(data)
        encoded = pipeline.encode(labels_of(decoded.model_input), decoded.placement, None, _json_format())
        pipeline.context.pixels.release(decoded.reserved_pixels)
        placement: Placement = decoded.placement
        return render_json(pipeline, ImageResult(placement.width, placement.height, Timing(0.0, 0.0, 1), encoded), 0.0)

    return reference, served


def codec_pipeline(config):
    """A semantic pipeline for ``config`` with no engine, batcher or server: its codec hooks
    (decode, encode, the video frame mapper) as the server runs them, for timing them alone,
    under the server's default image limit."""
    from segserve.config import Settings
    from segserve.pipelines.limits import PixelBudget
    from segserve.pipelines.semantic import SemanticModel

    max_pixels = Settings.model_fields["max_image_pixels"].default

    pipeline = SemanticModel.__new__(SemanticModel)
    pipeline.config = config
    pipeline.context = type("Context", (), {"max_image_pixels": max_pixels, "pixels": PixelBudget(max_pixels)})()
    return pipeline


def _json_format():
    from segserve.pipelines.base import OutputFormat

    return OutputFormat.json


def time_per_call(step, min_seconds: float) -> float:
    """Median seconds per call over batches of calls, after a warm-up."""
    for _ in range(20):
        step()
    per_call, stop_at = [], time.perf_counter() + min_seconds
    while time.perf_counter() < stop_at or len(per_call) < 5:
        started = time.perf_counter()
        for _ in range(20):
            step()
        per_call.append((time.perf_counter() - started) / 20)
    return statistics.median(per_call)


def measure_floor(steps, cores: int, min_seconds: float) -> dict:
    reference, served = steps
    ref_s, served_s = time_per_call(reference, min_seconds), time_per_call(served, min_seconds)
    return {
        "reference_ms": 1000 * ref_s,
        "reference_requests_per_s": cores / ref_s,
        "served_codec_ms": 1000 * served_s,
        "served_codec_requests_per_s": cores / served_s,
    }


# -- the service ---------------------------------------------------------------------------
def service_round(server: SegserveProcess, payload: Payload, requests: int, concurrency: int) -> dict:
    report = run_ab(segment_url(server.url, MODEL), payload, requests=requests, concurrency=concurrency)
    p = report["percentiles_ms"]
    return {
        "requests": report["complete_requests"],
        "failed": report["failed_requests"],
        "non_2xx": report["non_2xx_responses"],
        "requests_per_s": report["requests_per_second"],
        "p50_ms": p.get(50),
        "p99_ms": p.get(99),
        "command": report["command"],
    }


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds the server has used so far: the process (all its threads) and
    its child processes (the workers of --workers N), living ones and those it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own / os.sysconf("SC_CLK_TCK") + sum(server_cpu_s(int(child)) for child in children if Path(f"/proc/{child}").exists())


# -- profiling -----------------------------------------------------------------------------
def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.is_file() else shutil.which("py-spy")


def record(py_spy_bin: str, pid: int, out: Path, flags: list[str], seconds: int, rate: int) -> subprocess.Popen:
    command = [py_spy_bin, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate),
               "--format", "raw", "--output", str(out), *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: ``frame;frame;... count`` per line."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def frame_name(frame: str, line: bool = False) -> str:
    """``Class.function (path/to/module.py:123)`` -> ``Class.function (module.py)`` (``:123`` kept with ``line``)."""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    path, _, number = where.rstrip(")").rpartition(":")
    return f"{name} ({Path(path).name}{':' + number if line else ''})"


# Where the time goes, whoever called it: the deepest of these frames in a sample names its
# bucket (a sample with none of them is named by its deepest frame).
HOLDERS = {
    "encode (mask.py)": "pycocotools mask.encode (full-size masks)",
    "frPyObjects (mask.py)": "pycocotools frPyObjects (counts -> string)",
    "decode_image (image.py)": "decode_image (PIL open + JPEG decode + tobytes)",
    "Letterbox.apply (geometry.py)": "Letterbox.apply (resize + pad)",
    "Letterbox.restore (geometry.py)": "Letterbox.restore (full-size gather)",
    "semantic_segments (masks.py)": "semantic_segments (np.bincount, masks, rest)",
    "restored_segments (masks.py)": "restored_segments (runs at model resolution)",
    "render_json (base.py)": "render_json (JSON on the event loop)",
    "OnnxRuntimeEngine.infer (onnxruntime.py)": "onnxruntime Session.run",
}


def thread_of(frame: str) -> str:
    """py-spy --threads' first frame, ``thread (1234): codec_0`` -> ``codec``."""
    name = frame.split(": ", 1)[-1]
    return name.rstrip("0123456789").rstrip("_") or name


def by_process(stacks: list[tuple[list[str], int]]) -> tuple[list[tuple[list[str], int]], Counter]:
    """py-spy --subprocesses roots every stack in its process chain (``process 12:"cmd"``
    frames): the stacks without those frames, and the samples per process, named "server"
    (the process started: the only one, or --workers' engine process) or "worker PID"."""
    stripped, per_process = [], Counter()
    for frames, count in stacks:
        chain = [f for f in frames if f.startswith("process ")]
        per_process["server" if len(chain) <= 1 else f"worker {chain[-1].split(':', 1)[0].removeprefix('process ')}"] += count
        stripped.append((frames[len(chain):], count))
    return stripped, per_process


def summarise_gil(paths: list[Path], seconds: float, rate: int, top: int = 12) -> dict:
    """GIL-held share of wall time (samples / ticks) per process and over all of them (a
    share above 1 is more than one process's GIL held at once), the top holders by bucket, and
    the deepest lines (which line of semantic_segments: its np.bincount, say), over all ``paths``."""
    stacks, per_process = by_process([stack for path in paths for stack in read_collapsed(path)])
    held = sum(count for _, count in stacks)
    buckets: Counter = Counter()
    lines: Counter = Counter()
    for frames, count in stacks:
        names = [frame_name(f) for f in frames]
        bucket = next((HOLDERS[n] for n in reversed(names) if n in HOLDERS), None)
        buckets[bucket or names[-1]] += count
        lines[frame_name(frames[-1], line=True)] += count
    ticks = seconds * rate * len(paths)

    def shares(counter: Counter) -> list[dict]:
        return [{"holder": name, "share_of_gil_samples": count / held} for name, count in counter.most_common(top)] if held else []

    return {"gil_samples": held, "ticks": ticks, "gil_share_of_wall": held / ticks if ticks else None,
            "per_process": {name: count / ticks for name, count in sorted(per_process.items())} if ticks else {},
            "top": shares(buckets), "top_lines": shares(lines)}


def summarise_threads(path: Path, seconds: float, rate: int) -> list[dict]:
    """Per thread kind (py-spy --threads, idle samples left out): the share of wall time it ran."""
    per_thread: Counter = Counter()
    for frames, count in read_collapsed(path):
        per_thread[thread_of(frames[0])] += count
    ticks = seconds * rate
    return [{"thread": name, "active_share_of_wall": count / ticks} for name, count in per_thread.most_common()]


def record_under_load(server: SegserveProcess, payload: Payload, path: Path, flags: list[str], concurrency: int,
                      seconds: int, rate: int) -> dict:
    """py-spy for ``seconds`` inside an ab run of the same load that starts before and ends
    after it (ab -t), so every sample is under load."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy not found: pip install py-spy")
    with ThreadPoolExecutor(1) as pool:
        ab = pool.submit(run_ab, segment_url(server.url, MODEL), payload, 10**6, concurrency, time_limit_s=seconds + 4)
        time.sleep(1.5)
        spy = record(binary, server.process.pid, path, flags, seconds, rate)
        log, _ = spy.communicate(timeout=seconds + 120)
        report = ab.result()
    if spy.returncode != 0 or not path.is_file():
        raise RuntimeError(f"py-spy {' '.join(flags)} failed ({spy.returncode}): {log.strip()[-400:]}")
    return {"ab_requests_per_s": report["requests_per_second"], "ab_failed": report["failed_requests"] + report["non_2xx_responses"],
            "file": str(path)}


def profile(servers: dict[str, SegserveProcess], payload: Payload, out: Path, concurrency: int, seconds: int, rate: int,
            rounds: int) -> dict[str, dict]:
    """Per server: ``rounds`` py-spy --gil recordings, interleaved server by server (the GIL
    held per request moves with this VM's load as much as the throughput does: the median
    round counts), then one --threads recording."""
    result: dict[str, dict] = {name: {"gil_rounds": []} for name in servers}
    try:
        for i in range(rounds):
            for name, server in servers.items():
                path = out / name / f"bench_overhead_pyspy_gil_{i + 1}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                # --subprocesses: --workers N's HTTP workers hold GILs of their own
                run = record_under_load(server, payload, path, ["--gil", "--subprocesses"], concurrency, seconds, rate)
                gil = summarise_gil([path], seconds, rate)
                rps = run["ab_requests_per_s"]
                run.update(gil_share_of_wall=gil["gil_share_of_wall"], gil_ms_per_request=1000 * gil["gil_share_of_wall"] / rps,
                           gil_ms_per_request_by_process={name: 1000 * share / rps for name, share in gil["per_process"].items()})
                result[name]["gil_rounds"].append(run)
        for name, server in servers.items():
            path = out / name / "bench_overhead_pyspy_threads.txt"
            result[name]["threads_run"] = record_under_load(server, payload, path, ["--threads"], concurrency, seconds, rate)
            result[name]["threads"] = summarise_threads(path, seconds, rate)
    except RuntimeError as exc:
        return {name: {"error": str(exc)} for name in servers}
    for name, prof in result.items():
        runs = prof["gil_rounds"]
        prof["gil"] = summarise_gil([Path(r["file"]) for r in runs], seconds, rate)
        prof["gil_ms_per_request"] = statistics.median(r["gil_ms_per_request"] for r in runs)
        prof["gil_ms_per_request_by_process"] = {
            name: statistics.median(r["gil_ms_per_request_by_process"].get(name, 0.0) for r in runs)
            for name in sorted({name for r in runs for name in r["gil_ms_per_request_by_process"]})}
        prof["command"] = (f"py-spy record --pid PID --duration {seconds} --rate {rate} --format raw [--gil --subprocesses | --threads], "
                           f"inside ab -t {seconds + 4} -c {concurrency} -k -l")
    return result


# -- report --------------------------------------------------------------------------------
def profile_markdown(name: str, prof: dict) -> list[str]:
    if "error" in prof:
        return ["", f"profile of {name}: {prof['error']}"]
    gil, runs = prof["gil"], prof["gil_rounds"]
    per_round = ", ".join(f"{100 * r['gil_share_of_wall']:.0f} % at {r['ab_requests_per_s']:.0f} req/s = {r['gil_ms_per_request']:.2f} ms"
                          for r in runs)
    return [
        "",
        f"**{name}**, py-spy under the same load (`{prof['command']}`), {len(runs)} rounds ({per_round}): "
        f"**{prof['gil_ms_per_request']:.2f} ms of GIL per request** (median round); over all rounds a thread held the GIL "
        f"{100 * gil['gil_share_of_wall']:.0f} % of wall time ({gil['gil_samples']} of {gil['ticks']:.0f} ticks).",
        *([] if len(prof["gil_ms_per_request_by_process"]) < 2 else [
            "", "GIL ms per request by process (median round; `server` is the engine process): " + ", ".join(
                f"{name} {ms:.2f}" for name, ms in prof["gil_ms_per_request_by_process"].items()) + "."]),
        "",
        "| GIL holder | share of GIL samples |",
        "|---|---:|",
        *[f"| {t['holder']} | {100 * t['share_of_gil_samples']:.1f} % |" for t in gil["top"]],
        "",
        "| deepest frame (line) | share of GIL samples |",
        "|---|---:|",
        *[f"| {t['holder']} | {100 * t['share_of_gil_samples']:.1f} % |" for t in gil["top_lines"][:8]],
        "",
        f"| threads (py-spy --threads, non-idle samples; ab {prof['threads_run']['ab_requests_per_s']:.0f} req/s) | share of wall time running |",
        "|---|---:|",
        *[f"| {t['thread']} | {100 * t['active_share_of_wall']:.0f} % |" for t in prof["threads"]],
    ]


def markdown(result: dict) -> str:
    servers = result["servers"]
    first = next(iter(servers.values()))["rounds"][0]["service"]["command"]
    which = "; servers: " + ", ".join(f"`{name}` = {path}" for name, path in result["versions"].items()) if len(servers) > 1 else ""
    lines = [
        f"Trivial model (`labels = images[:, 0] > 127`, {SIZE}x{SIZE}, max batch {MAX_BATCH_SIZE}) on {result['machine']}, "
        f"image {result['image']}{which}; `workers N`: `segserve serve --workers N` (1 = one process).",
        "",
        f"Service: `{first.split(' -p ')[0]} -p photo_640x480.jpg -T image/jpeg URL`; floor: the codec loop in one thread x "
        f"{result['cores']} cores, measured right before each round (issue 12's definition: decode at 1/2 draft scale, letterbox, "
        "restore, two pycocotools RLEs on full-size masks, json.dumps); served codec: the server's own decode + encode + JSON.",
        "",
        "| round | server | floor ms/req (1 core) | floor req/s | served codec ms/req | service req/s | p50 ms | p99 ms | failed "
        "| non-2xx | server CPU ms/req | service/floor |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(len(result["floors"])):
        for name, server in servers.items():
            r = server["rounds"][i]
            f, s = r["floor"], r["service"]
            lines.append(
                f"| {i + 1} | {name} | {f['reference_ms']:.2f} | {f['reference_requests_per_s']:.0f} | {f['served_codec_ms']:.2f} "
                f"| {s['requests_per_s']:.1f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['failed']} | {s['non_2xx']} "
                f"| {r['server_cpu_ms_per_request']:.2f} | {r['ratio']:.2f} |"
            )
    lines.append("")
    for name, server in servers.items():
        lines.append(
            f"**{name}: service / codec floor at concurrency {result['concurrency']}: {server['ratio']:.2f}** "
            f"(median of {len(server['rounds'])} rounds: service {server['service_requests_per_s']:.0f} req/s, "
            f"floor {server['floor_requests_per_s']:.0f} req/s on {result['cores']} cores; "
            f"server CPU {server['server_cpu_ms_per_request']:.2f} ms/request, median)  "
        )
    for name, server in servers.items():
        if server.get("profile"):
            lines += profile_markdown(name, server["profile"])
    return "\n".join(lines)


def summarise_server(rounds: list[dict], profile_result: dict | None) -> dict:
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    return {
        "rounds": rounds,
        "ratio": median["ratio"],
        "service_requests_per_s": median["service"]["requests_per_s"],
        "floor_requests_per_s": median["floor"]["reference_requests_per_s"],
        "server_cpu_ms_per_request": statistics.median(r["server_cpu_ms_per_request"] for r in rounds),
        "profile": profile_result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.bench_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="ab requests per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="paired floor/service rounds; the median counts")
    parser.add_argument("--floor-seconds", type=float, default=3.0, help="per floor figure per round")
    parser.add_argument("--profile", action="store_true", help="also record py-spy --gil and --threads under the same load")
    parser.add_argument("--profile-seconds", type=int, default=8)
    parser.add_argument("--profile-rate", type=int, default=200)
    parser.add_argument("--profile-rounds", type=int, default=3, help="py-spy --gil recordings per server; the median counts")
    parser.add_argument("--profile-dir", type=Path, default=Path("out/bench_overhead"), help="py-spy's raw profiles")
    parser.add_argument("--baseline", metavar="REV|DIR",
                        help="also serve an older segserve, interleaved round by round with this one: a git revision of this "
                             "checkout (its service/ is archived to a temporary folder), or a folder holding a segserve package")
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated `segserve serve --workers` values, each a server of its own, interleaved round by round")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--label", default="", help="a note stored with the result (e.g. the commit)")
    args = parser.parse_args(argv)

    payload = photo()
    cores = cpu_count()
    steps = floor_steps(payload.body)
    args.out.mkdir(parents=True, exist_ok=True)
    floors, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="segserve-overhead-") as tmp, contextlib.ExitStack() as stack:
        workers = [int(n) for n in args.workers.split(",")]
        # name -> (environment, `segserve serve --workers`)
        variants = {f"workers {n}": ({}, n) for n in workers}
        if args.baseline:
            variants = {"baseline": ({"PYTHONPATH": str(baseline_path(args.baseline, Path(tmp)))}, 1), **variants}
        rounds = {name: [] for name in variants}
        repository = Path(tmp) / "repository"
        build_trivial_model(repository)
        servers = {name: stack.enter_context(SegserveProcess(repository, Path(tmp) / f"server-{name.replace(' ', '-')}.log",
                                                             models=[MODEL], env=env, args=["--workers", str(n)] if n != 1 else []))
                   for name, (env, n) in variants.items()}
        for server in servers.values():
            run_ab(segment_url(server.url, MODEL), payload, requests=300, concurrency=args.concurrency)  # warm the path
        for i in range(args.rounds):
            floor = measure_floor(steps, cores, args.floor_seconds)
            floors.append(floor)
            for name, server in servers.items():
                cpu_before = server_cpu_s(server.process.pid)
                service = service_round(server, payload, args.requests, args.concurrency)
                cpu_ms = 1000 * (server_cpu_s(server.process.pid) - cpu_before) / max(1, service["requests"])
                rounds[name].append({"floor": floor, "service": service, "server_cpu_ms_per_request": cpu_ms,
                                     "ratio": service["requests_per_s"] / floor["reference_requests_per_s"]})
                print(f"round {i + 1} {name}: floor {floor['reference_ms']:.2f} ms ({floor['reference_requests_per_s']:.0f} req/s), "
                      f"served codec {floor['served_codec_ms']:.2f} ms, service {service['requests_per_s']:.1f} req/s "
                      f"({cpu_ms:.2f} ms CPU/req), ratio {rounds[name][-1]['ratio']:.2f}", flush=True)
        if args.profile:
            profiles = profile(servers, payload, args.profile_dir, args.concurrency, args.profile_seconds, args.profile_rate,
                               args.profile_rounds)
        versions = {name: version_of(server) for name, server in servers.items()}
        if args.baseline:
            versions["baseline"] = f"{args.baseline} ({versions['baseline']})"
        for n in workers:
            versions[f"workers {n}"] = f"{checkout_revision()} ({versions[f'workers {n}']})"
    result = {
        "label": args.label,
        "model": MODEL,
        "config_yaml": CONFIG_YAML,
        "machine": f"{platform.machine()}, {cores} CPUs",
        "cores": cores,
        "workers": {name: n for name, (_, n) in variants.items()},
        "image": f"{payload.name} ({len(payload.body)} bytes)",
        "concurrency": args.concurrency,
        "versions": versions,
        "floors": floors,
        "servers": {name: summarise_server(rounds[name], profiles.get(name)) for name in variants},
    }
    (args.out / "bench_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "bench_overhead.md").write_text(text + "\n")
    print(text)
    return 0


def checkout_revision() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def baseline_path(baseline: str, tmp: Path) -> Path:
    """A folder to put on PYTHONPATH so that ``import segserve`` finds the baseline."""
    folder = Path(baseline)
    if folder.is_dir():
        return folder.resolve()
    source = tmp / "baseline-src"
    source.mkdir()
    archive = subprocess.run(["git", "archive", baseline, "service"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    (tmp / "baseline").mkdir()
    (tmp / "baseline" / "segserve").symlink_to(source / "service")
    return tmp / "baseline"


def version_of(server: SegserveProcess) -> str:
    """Where the server's segserve came from (its package folder)."""
    code = "import segserve, pathlib; print(pathlib.Path(segserve.__file__).resolve().parent)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=server.env, timeout=60)
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    raise SystemExit(main())
