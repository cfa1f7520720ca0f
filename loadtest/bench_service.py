"""Service vs raw engine, measured in one run (`make bench`), on two models by default: the
512x512 random-weights LRASPP the benchmark exports itself, and the bundled 256x256 one users
get by default (`STANDARD_CASES`, each with its target ratio), or on one given with ``--model``.

1. Raw engine: ONNX Runtime on preprocessed uint8 batches held in memory, batch sizes
   1..max; the best images/s is the ceiling the service is judged against.
2. Service: `segserve serve` on the same model, driven by ab (-k -l) with a 640x480 JPEG at
   concurrency 1, 8 and 32: requests/s, p50/p95/p99, and the server's own mean batch size,
   queue and compute time from /metrics.
3. Ratio: service requests/s at the highest concurrency / raw engine images/s at its best
   batch size, measured back to back in paired rounds (the median round counts): on a
   shared VM the machine's speed drifts between measurements minutes apart.
4. Ceiling: what no server on these cores could exceed, from the same round. Each request
   costs at least the raw engine's CPU per image plus the codec floor (decode, letterbox,
   restore, RLE, JSON of this model's own answer to the photo, one thread: the cheaper of
   issue 12's reference and segserve's own codec path, ``bench_overhead.codec_floor``), and
   the cores give at most their count in CPU seconds per second.

    python -m segserve_loadtest.bench_service --out docs/bench [--model NAME --repository R --input-size HxW]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from segserve_loadtest.ab import run_ab, segment_url
from segserve_loadtest.bench_overhead import codec_floor, measure_floor
from segserve_loadtest.bench_peers import cpu_count
from segserve_loadtest.payloads import Payload, synthetic_scene
from segserve_loadtest.server import SegserveProcess
from segserve_loadtest.server_metrics import delta, scrape


def ensure_model(repository: Path, architecture: str, input_size: tuple[int, int]) -> Path:
    from segserve.contract.artifacts import CONFIG_FILE
    from segserve.contract.model_config import latest_version
    from segserve_models.export import export_model
    from segserve_models.weights import WeightsSpec

    if (repository / architecture / CONFIG_FILE).is_file() and latest_version(repository / architecture):
        return repository
    # Weights do not change speed; random ones need no download.
    export_model(architecture, repository, WeightsSpec("random"), input_size=input_size, progress=False)
    return repository


class RawEngine:
    """The model's engines on one preprocessed image held in memory, as many instances
    running in parallel as the model's config gives the service (so both use the same engines)."""

    def __init__(self, repository: Path, name: str, image: np.ndarray):
        from segserve.codecs.geometry import Letterbox
        from segserve.engine import create_engines
        from segserve.repository import scan

        entry = next(e for e in scan(repository) if e.config.name == name)
        self.config = entry.config
        self.spec = spec = entry.config.input
        self.max_batch_size = entry.config.max_batch_size
        self.tensor = Letterbox.fit(image.shape[0], image.shape[1], spec).apply(image, spec.pad_value)
        self.engines = create_engines(entry.config, entry.version_dir, "onnxruntime")  # as the server builds them

    def measure(self, size: int, min_seconds: float) -> dict:
        batch = {self.spec.name: np.stack([self.tensor] * size)}
        for engine in self.engines:
            engine.infer(batch)  # warm-up for this shape
        runs = [0] * len(self.engines)
        stop_at = time.perf_counter() + min_seconds

        def loop(i: int) -> None:
            while time.perf_counter() < stop_at or runs[i] < 3:
                self.engines[i].infer(batch)
                runs[i] += 1

        started, cpu_started = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(self.engines))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        images = sum(runs) * size
        return {"batch_size": size, "instances": len(self.engines), "images_per_s": images / elapsed,
                "ms_per_batch": 1000 * elapsed * len(self.engines) / sum(runs), "cpu_ms_per_image": 1000 * cpu / images}

    def labels(self) -> np.ndarray:
        """The model's (H, W) labels for the image: what the codec floor encodes."""
        from segserve.pipelines.semantic import infer_labels

        return infer_labels(self.engines[0], self.config, self.tensor[None])[0]

    def sweep(self, min_seconds: float) -> list[dict]:
        sizes = [1 << i for i in range(self.max_batch_size.bit_length()) if 1 << i <= self.max_batch_size]
        return [self.measure(size, min_seconds) for size in sizes]

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


def service_level(server: SegserveProcess, client: httpx.Client, name: str, payload: Payload, concurrency: int, requests: int) -> dict:
    url = segment_url(server.url, name)
    before = scrape(client, server.url)
    report = run_ab(url, payload, requests=max(requests, 4 * concurrency), concurrency=concurrency)
    server_side = delta(before, scrape(client, server.url), name)
    p = report["percentiles_ms"]
    return {
        "concurrency": concurrency,
        "requests": report["complete_requests"],
        "failed": report["failed_requests"],
        "non_2xx": report["non_2xx_responses"],
        "requests_per_s": report["requests_per_second"],
        "p50_ms": p.get(50), "p95_ms": p.get(95), "p99_ms": p.get(99),
        "mean_batch_size": server_side.batch_size,
        "server_queue_ms": server_side.queue_ms,
        "server_compute_ms": server_side.compute_ms,
        "command": report["command"],
    }


def ceiling(cores: int, engine_images_per_s: float, engine_cpu_ms_per_image: float, codec_ms_per_request: float) -> float:
    """The highest service/engine ratio any server could reach on ``cores``: each request needs the
    engine's CPU per image and the codec floor's, and the cores give ``cores`` CPU-seconds a second."""
    return cores * 1000 / (engine_cpu_ms_per_image + codec_ms_per_request) / engine_images_per_s


def paired_rounds(raw: RawEngine, best_size: int, server: SegserveProcess, client: httpx.Client, name: str,
                  payload: Payload, concurrency: int, requests: int, rounds: int, engine_seconds: float) -> list[dict]:
    """Raw engine, codec floor and service measured back to back, `rounds` times: this machine's
    speed drifts by 20% and more over minutes (a shared VM), so a ratio of two figures taken
    minutes apart says more about the drift than about the service. Each round's ratio and
    ceiling compare neighbours in time; the median round is the headline."""
    labels = raw.labels()
    floor_steps = codec_floor(payload.body, raw.config, lambda tensor: labels)
    cores = cpu_count()
    result = []
    for _ in range(rounds):
        engine = raw.measure(best_size, engine_seconds)
        floor = measure_floor(floor_steps, cores, engine_seconds / 4)
        codec_ms = min(floor["reference_ms"], floor["served_codec_ms"])
        service = service_level(server, client, name, payload, concurrency, requests)
        result.append({"engine_images_per_s": engine["images_per_s"], "engine_cpu_ms_per_image": engine["cpu_ms_per_image"],
                       "codec_floor_ms": codec_ms, "service_requests_per_s": service["requests_per_s"],
                       "failed": service["failed"], "non_2xx": service["non_2xx"],
                       "ratio": service["requests_per_s"] / engine["images_per_s"],
                       "ceiling": ceiling(cores, engine["images_per_s"], engine["cpu_ms_per_image"], codec_ms)})
    return result


def levels_markdown(result: dict) -> str:
    """The raw engine's batch sizes and the service's concurrency levels, side by side."""
    engine_best = result["engine_best_images_per_s"]
    lines = [
        f"Model `{result['model']}` input {result['input']} on {result['machine']}, image {result['image']}, "
        f"`segserve serve --workers {result.get('workers', 1)}`.",
        "",
        "| raw engine batch | instances | images/s | ms/batch |",
        "|---:|---:|---:|---:|",
        *[f"| {r['batch_size']} | {r['instances']} | {r['images_per_s']:.1f} | {r['ms_per_batch']:.1f} |" for r in result["engine"]],
        "",
        "| concurrency | req/s | p50 ms | p95 ms | p99 ms | failed | non-2xx | mean batch | queue ms | compute ms | service/engine |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["service"]:
        lines.append(
            f"| {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {r['failed']} | {r['non_2xx']} | {r['mean_batch_size']:.2f} | {r['server_queue_ms']:.1f} "
            f"| {r['server_compute_ms']:.1f} | {r['requests_per_s'] / engine_best:.2f} |"
        )
    return "\n".join(lines)


def markdown(result: dict) -> str:
    top = result["service"][-1]["concurrency"]
    lines = [
        levels_markdown(result),
        "",
        f"Paired rounds at concurrency {top} (raw engine at batch {result['best_batch_size']}, then the service, back to back):",
        "",
        "| round | raw engine images/s | engine CPU ms/image | codec floor ms/request | service req/s | failed | non-2xx "
        "| service/engine | ceiling |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {i} | {r['engine_images_per_s']:.1f} | {r['engine_cpu_ms_per_image']:.2f} | {r['codec_floor_ms']:.2f} "
          f"| {r['service_requests_per_s']:.1f} | {r['failed']} | {r['non_2xx']} | {r['ratio']:.2f} | {r['ceiling']:.2f} |"
          for i, r in enumerate(result["rounds"], 1)],
        "",
        f"**service/engine throughput at concurrency {top}: {result['ratio']:.3f}** (median of {len(result['rounds'])} paired rounds); "
        f"the ceiling on these cores (engine CPU + codec floor per request): {result['ceiling']:.3f}",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Case:
    """One model `make bench` measures, and the service/engine ratio it must keep at the top concurrency."""

    label: str
    repository: Path
    model: str
    input_size: str
    target: float | None = None
    exported_by: str = ""  # how the model gets there when the benchmark does not export it itself


# What `make bench` measures: the 512x512 random-weights model the benchmark exports itself (the engine
# dominates), and the bundled model users get by default (256x256: the server's own work weighs more).
STANDARD_CASES = (
    Case("LRASPP-MobileNetV3 512x512, random weights", Path(".cache/bench_repo"), "lraspp_mobilenet_v3_large", "512x512", 0.9),
    Case("bundled shapes_lraspp 256x256 (as `make models` exports it)", Path("model_repository"), "shapes_lraspp", "256x256",
         0.85, exported_by="make models"),
)


def measure_case(case: Case, args: argparse.Namespace, payload: Payload, scene) -> dict:
    h, w = (int(v) for v in case.input_size.lower().split("x"))
    if case.exported_by:
        if not (case.repository / case.model).is_dir():
            raise SystemExit(f"{case.repository / case.model} is missing: run `{case.exported_by}` first")
        repository = case.repository
    else:
        repository = ensure_model(case.repository, case.model, (h, w))
    levels = [int(v) for v in args.levels.split(",")]
    raw = RawEngine(repository, case.model, np.asarray(scene))
    engine_rows = raw.sweep(args.engine_seconds)
    best = max(engine_rows, key=lambda r: r["images_per_s"])
    with SegserveProcess(repository, args.out / f"bench_server_{case.model}.log", models=[case.model],
                         args=["--workers", str(args.workers)]) as server, httpx.Client(timeout=30) as client:
        run_ab(segment_url(server.url, case.model), payload, requests=max(20, levels[-1]), concurrency=levels[-1])  # warm the path
        service_rows = [service_level(server, client, case.model, payload, c, args.requests) for c in levels]
        rounds = paired_rounds(raw, best["batch_size"], server, client, case.model, payload, levels[-1], args.requests,
                               args.rounds, args.engine_seconds)
    raw.close()
    return {
        "label": case.label,
        "model": case.model,
        "input": f"{raw.spec.height}x{raw.spec.width}",  # what is served, whatever --input-size said
        "target": case.target,
        "workers": args.workers,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs",
        "image": f"{payload.name} ({len(payload.body)} bytes)",
        "engine": engine_rows,
        "engine_best_images_per_s": best["images_per_s"],
        "best_batch_size": best["batch_size"],
        "service": service_rows,
        "rounds": rounds,
        "ratio": statistics.median(r["ratio"] for r in rounds),
        "ceiling": statistics.median(r["ceiling"] for r in rounds),
    }


def summary_markdown(results: list[dict]) -> str:
    top = results[0]["service"][-1]["concurrency"]
    lines = [f"| model | service/engine at concurrency {top} | ceiling on these cores | target | |", "|---|---:|---:|---:|---|"]
    for r in results:
        verdict = "" if r["target"] is None else ("met" if r["ratio"] >= r["target"] else "**not met**")
        target = "" if r["target"] is None else f">= {r['target']:.2f}"
        # three decimals: 0.899 against a target of 0.90 must not read as 0.90
        lines.append(f"| {r['label']} | {r['ratio']:.3f} | {r['ceiling']:.3f} | {target} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.bench_service", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="one model instead of the standard two: an architecture the benchmark exports "
                                        "with random weights, or a model already in --repository")
    parser.add_argument("--input-size", default="512x512", help="with --model: the size it is exported at (HxW); a model already in --repository keeps its own")
    parser.add_argument("--repository", type=Path, default=Path(".cache/bench_repo"), help="with --model")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests", type=int, default=300, help="ab requests per level (at least 4x the concurrency)")
    parser.add_argument("--engine-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="paired raw-engine/service rounds at the top concurrency")
    parser.add_argument("--workers", type=int, default=1, help="`segserve serve --workers` (1 = one process)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    args = parser.parse_args(argv)

    cases = [Case(args.model, args.repository, args.model, args.input_size)] if args.model else list(STANDARD_CASES)
    scene = synthetic_scene(640, 480, seed=0)
    buffer = io.BytesIO()
    scene.save(buffer, format="JPEG", quality=85)
    payload = Payload("photo_640x480.jpg", "image/jpeg", buffer.getvalue())
    args.out.mkdir(parents=True, exist_ok=True)
    results = [measure_case(case, args, payload, scene) for case in cases]
    (args.out / "bench_service.json").write_text(json.dumps({"cases": results}, indent=2))
    text = "\n\n".join([summary_markdown(results), *(f"### {r['label']}\n\n{markdown(r)}" for r in results)])
    (args.out / "bench_service.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
