"""Per-image CPU latency of each semantic family through the server, on ONNX Runtime and on torch.

For each architecture: export it at 512x512 with random weights (speed does not depend on them) into
``--repository`` unless it is there, start ``segserve serve --backend B --models NAME`` for each
backend, and POST a 640x480 JPEG ``--requests`` times one after another (concurrency 1, after
``--warmup`` requests). Reports the median and p90 of the client's latency and of the server's
``timing_ms.compute`` (the engine run: one image per batch at concurrency 1).

    flock /tmp/segserve-bench.lock .venv/bin/python -m segserve_loadtest.bench_families --out docs/bench
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from pathlib import Path

import httpx

from segserve_loadtest.payloads import synthetic_scene
from segserve_loadtest.server import SegserveProcess

FAMILIES = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50")
BACKENDS = ("onnxruntime", "torch")


def ensure(repository: Path, architecture: str, size: tuple[int, int]) -> None:
    from segserve.contract.artifacts import CONFIG_FILE
    from segserve_models.export import export_model
    from segserve_models.weights import WeightsSpec

    if not (repository / architecture / CONFIG_FILE).is_file():
        export_model(architecture, repository, WeightsSpec("random"), input_size=size, progress=False)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(repository: Path, architecture: str, backend: str, body: bytes, requests: int, warmup: int) -> dict:
    with SegserveProcess(repository, models=[architecture], args=["--backend", backend]) as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            info = client.get(f"/v1/models/{architecture}").json()
            latency, compute = [], []
            for i in range(warmup + requests):
                start = time.perf_counter()
                r = client.post("/segment", params={"model": architecture}, content=body, headers={"Content-Type": "image/jpeg"})
                elapsed = (time.perf_counter() - start) * 1000
                r.raise_for_status()
                if i >= warmup:
                    latency.append(elapsed)
                    compute.append(r.json()["timing_ms"]["compute"])
    return {
        "architecture": architecture,
        "backend": backend,
        "device": info["device"],
        "instances": info["instances"],
        "requests": requests,
        "latency_ms_p50": round(statistics.median(latency), 1),
        "latency_ms_p90": round(quantile(latency, 0.9), 1),
        "compute_ms_p50": round(statistics.median(compute), 1),
        "compute_ms_p90": round(quantile(compute, 0.9), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("/tmp/segserve-bench-families"))
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--input-size", default="512x512")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_families.{md,json}")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.input_size.lower().split("x"))
    buffer = io.BytesIO()
    synthetic_scene(640, 480, seed=0).save(buffer, format="JPEG", quality=90)
    body = buffer.getvalue()

    rows = []
    for architecture in args.models.split(","):
        ensure(args.repository, architecture, (h, w))
        for backend in args.backends.split(","):
            row = measure(args.repository, architecture, backend, body, args.requests, args.warmup)
            print(json.dumps(row), flush=True)
            rows.append(row)

    header = ("| architecture | backend | instances | compute ms p50 | compute ms p90 | latency ms p50 | latency ms p90 |\n"
              "|---|---|---:|---:|---:|---:|---:|")
    lines = [f"| `{r['architecture']}` | {r['backend']} ({r['device']}) | {r['instances']} | {r['compute_ms_p50']} | "
             f"{r['compute_ms_p90']} | {r['latency_ms_p50']} | {r['latency_ms_p90']} |" for r in rows]
    table = "\n".join([header, *lines])
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"input": f"{h}x{w}", "weights": "random", "requests": args.requests, "warmup": args.warmup,
                "cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_at_end": os.getloadavg()}
        (args.out / "bench_families.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        (args.out / "bench_families.md").write_text(
            f"# Semantic families through the server ({h}x{w}, random weights, concurrency 1)\n\n"
            f"`python -m segserve_loadtest.bench_families`; {json.dumps(meta)}\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
