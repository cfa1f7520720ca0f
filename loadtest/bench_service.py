"""Service vs raw engine, measured in one run (`make bench`).

1. Raw engine: ONNX Runtime on preprocessed uint8 batches held in memory, batch sizes
   1..max; the best images/s is the ceiling the service is judged against.
2. Service: `segserve serve` on the same model, driven by ab (-k -l) with a 640x480 JPEG at
   concurrency 1, 8 and 32: requests/s, p50/p95/p99, and the server's own mean batch size,
   queue and compute time from /metrics.
3. Ratio: service requests/s at the highest concurrency / raw engine best images/s.

    python -m loadtest.bench_service --out docs/bench
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.ab import run_ab, segment_url
from loadtest.payloads import Payload, synthetic_scene
from loadtest.server import SegserveProcess
from loadtest.server_metrics import delta, scrape


def ensure_model(repository: Path, architecture: str, input_size: tuple[int, int]) -> Path:
    from models.export import export_model
    from models.weights import WeightsSpec
    from service.repository import latest_version

    if (repository / architecture / "config.yaml").is_file() and latest_version(repository / architecture):
        return repository
    # Weights do not change speed; random ones need no download.
    export_model(architecture, repository, WeightsSpec("random"), input_size=input_size, progress=False)
    return repository


def bench_engine(repository: Path, name: str, image: np.ndarray, min_seconds: float) -> list[dict]:
    """Raw engine throughput per batch size, with as many engine instances running in
    parallel as the model's config gives the service (so both use the same engines)."""
    from service.codecs.geometry import Letterbox
    from service.engine import create_engine
    from service.repository import scan

    entry = next(e for e in scan(repository) if e.config.name == name)
    spec = entry.config.input
    box = Letterbox.fit(image.shape[0], image.shape[1], spec)
    tensor = box.apply(image, spec.pad_value)
    engines = [create_engine(entry.config, entry.version_dir, "onnxruntime") for _ in range(entry.config.instances)]
    rows = []
    size = 1
    while size <= entry.config.max_batch_size:
        batch = {spec.name: np.stack([tensor] * size)}
        for engine in engines:
            engine.infer(batch)  # warm-up for this shape
        runs = [0] * len(engines)
        stop_at = time.perf_counter() + min_seconds

        def loop(i: int) -> None:
            while time.perf_counter() < stop_at or runs[i] < 3:
                engines[i].infer(batch)
                runs[i] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(engines))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        rows.append({"batch_size": size, "instances": len(engines), "images_per_s": sum(runs) * size / elapsed,
                     "ms_per_batch": 1000 * elapsed * len(engines) / sum(runs)})
        size *= 2
    for engine in engines:
        engine.close()
    return rows


def bench_service(repository: Path, name: str, payload: Payload, levels: list[int], requests: int, log: Path) -> list[dict]:
    rows = []
    with SegserveProcess(repository, log, models=[name]) as server, httpx.Client(timeout=30) as client:
        url = segment_url(server.url, name)
        run_ab(url, payload, requests=max(20, levels[-1]), concurrency=levels[-1])  # warm the path
        for concurrency in levels:
            before = scrape(client, server.url)
            report = run_ab(url, payload, requests=max(requests, 4 * concurrency), concurrency=concurrency)
            server_side = delta(before, scrape(client, server.url), name)
            p = report["percentiles_ms"]
            rows.append({
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
            })
    return rows


def markdown(result: dict) -> str:
    engine_best = result["engine_best_images_per_s"]
    lines = [
        f"Model `{result['model']}` input {result['input']} on {result['machine']}, image {result['image']}.",
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
    lines += ["", f"**service/engine throughput at concurrency {result['service'][-1]['concurrency']}: {result['ratio']:.2f}**"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_service", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lraspp_mobilenet_v3_large", help="architecture to export and serve")
    parser.add_argument("--input-size", default="512x512")
    parser.add_argument("--repository", type=Path, default=Path(".cache/bench_repo"))
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests", type=int, default=300, help="ab requests per level (at least 4x the concurrency)")
    parser.add_argument("--engine-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    args = parser.parse_args(argv)

    h, w = (int(v) for v in args.input_size.lower().split("x"))
    repository = ensure_model(args.repository, args.model, (h, w))
    scene = synthetic_scene(640, 480, seed=0)
    buffer = io.BytesIO()
    scene.save(buffer, format="JPEG", quality=85)
    payload = Payload("photo_640x480.jpg", "image/jpeg", buffer.getvalue())
    levels = [int(v) for v in args.levels.split(",")]

    engine_rows = bench_engine(repository, args.model, np.asarray(scene), args.engine_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    service_rows = bench_service(repository, args.model, payload, levels, args.requests, args.out / "bench_server.log")
    best = max(r["images_per_s"] for r in engine_rows)
    result = {
        "model": args.model,
        "input": args.input_size,
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
        "image": f"{payload.name} ({len(payload.body)} bytes)",
        "engine": engine_rows,
        "engine_best_images_per_s": best,
        "service": service_rows,
        "ratio": service_rows[-1]["requests_per_s"] / best,
    }
    (args.out / "bench_service.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (args.out / "bench_service.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
