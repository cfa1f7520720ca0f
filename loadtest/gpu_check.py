"""`make gpu-check`: the GPU data path measured in one prepared run, within 8 minutes.

On a machine with CUDA: the bundled LRASPP (shapes_lraspp, 256x256) served by the torch backend,
fp16 on CUDA, twice -- with the device data path (nvJPEG decode, letterbox, argmax, restore and RLE
run starts on the GPU; segserve.pipelines.semantic_device) and with the default CPU data path --
each driven by ``ab -n N -c 32 -k -p photo.jpg -T image/jpeg``. Recorded per path: images/s,
p50/p99, GPU utilisation (pynvml when importable, else ``nvidia-smi -lms 200``), the server's CPU ms
per request (/proc/PID/stat), and how far the two paths' label maps agree. It prints a markdown
block and replaces the marked "GPU check" section of docs/benchmarks.md.

``--dry-run`` (automatic without CUDA): every phase on CPU torch tensors with tiny request counts,
checking the plumbing -- both servers start and say which path serves, their answers agree (exactly,
on CPU), ab's figures parse -- and writing no docs. tests/test_gpu_check.py runs it.

Each phase has a time budget; one that overruns stops the run with an error naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from segserve.contract.model_config import load_config
from segserve_loadtest.ab import run_ab, segment_url
from segserve_loadtest.bench_overhead import checkout_revision, photo, server_cpu_s
from segserve_loadtest.payloads import Payload, synthetic_scene
from segserve_loadtest.server import SegserveProcess

MODEL = "shapes_lraspp"
ARCHITECTURE = "lraspp_mobilenet_v3_large"
INPUT_SIZE = (256, 256)
CONCURRENCY = 32
TOTAL_BUDGET_S = 480.0  # the whole check: 8 minutes
DOCS = Path("docs/benchmarks.md")
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
# The share of label-map pixels the two data paths must agree on for an image the CPU path reads no
# draft of: all on CPU (the same arithmetic); on CUDA fp16 and the float32 resize may move boundary
# pixels, so the figure is reported and only a gross disagreement fails. ab's photo is drafted on the
# CPU path (decoded at half size): its figure is reported only.
MIN_AGREEMENT = {"dry": 1.0, "gpu": 0.98}


class PhaseOverrun(RuntimeError):
    pass


@dataclass
class Budget:
    """Phase budgets within the whole run's; ``phase`` fails loudly once one is overrun."""

    total_s: float
    started: float = field(default_factory=time.monotonic)
    spent: dict[str, float] = field(default_factory=dict)

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.started)

    @contextlib.contextmanager
    def phase(self, name: str, budget_s: float):
        budget_s = min(budget_s, self.left())
        if budget_s <= 0:
            raise PhaseOverrun(f"no time left for phase {name!r} ({self.total_s:.0f} s spent)")
        began = time.monotonic()
        print(f"gpu-check: {name} (budget {budget_s:.0f} s)", flush=True)
        yield budget_s
        took = time.monotonic() - began
        self.spent[name] = took
        print(f"gpu-check: {name} took {took:.1f} s", flush=True)
        if took > budget_s:
            raise PhaseOverrun(f"phase {name!r} took {took:.0f} s, over its {budget_s:.0f} s budget")


# -- GPU utilisation -----------------------------------------------------------------------
class GpuSampler:
    """utilization.gpu every 200 ms while a round runs: pynvml when importable, else nvidia-smi."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.samples: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._smi: subprocess.Popen | None = None

    def __enter__(self) -> "GpuSampler":
        if not self.enabled:
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "pynvml"
            self._thread = threading.Thread(target=self._poll, args=(pynvml, handle), daemon=True)
            self._thread.start()
        except Exception:  # noqa: BLE001 - not installed, or no NVML: nvidia-smi instead
            smi = shutil.which("nvidia-smi")
            if smi is not None:
                self.source = "nvidia-smi"
                self._smi = subprocess.Popen([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def _poll(self, pynvml, handle) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._smi is not None:
            self._smi.terminate()
            out, _ = self._smi.communicate(timeout=5)
            self.samples = [float(line.split(",")[0]) for line in out.splitlines() if re.fullmatch(r"\s*\d+(\.\d+)?\s*", line)]

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


# -- the model and the servers ------------------------------------------------------------
def prepare_repository(source: Path, out: Path, device: str, instances: int | None) -> Path:
    """``out`` holding shapes_lraspp (copied from ``source``, else exported there first at 256x256)
    with the torch backend on ``device``, fp16 where that is CUDA (and ``instances`` when given)."""
    model_dir = source / MODEL
    if not (model_dir / "config.yaml").is_file():
        from segserve_models.export import export_model
        from segserve_models.weights import WeightsSpec

        export_model(ARCHITECTURE, source, WeightsSpec.parse(f"bundled:{MODEL}"), name=MODEL, input_size=INPUT_SIZE,
                     progress=False)
    shutil.copytree(model_dir, out / MODEL, dirs_exist_ok=True, ignore=shutil.ignore_patterns("trt_cache"))
    config = load_config(out / MODEL)
    torch_options = config.torch.model_copy(update={"device": device, "fp16": True})
    update = {"backends": ["torch"], "torch": torch_options} | ({"instances": instances} if instances else {})
    config.model_copy(update=update).dump(out / MODEL / "config.yaml")
    return out


def model_info(server: SegserveProcess) -> dict:
    models = httpx.get(server.url + "/v1/models", timeout=10).json()["models"]
    return next(m for m in models if m["name"] == MODEL)


def label_map(server: SegserveProcess, payload: Payload) -> np.ndarray:
    response = httpx.post(segment_url(server.url, MODEL) + "&format=png", content=payload.body,
                          headers={"content-type": payload.content_type}, timeout=60)
    response.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(response.content)))


def segments(server: SegserveProcess, payload: Payload) -> list[dict]:
    response = httpx.post(segment_url(server.url, MODEL), content=payload.body, headers={"content-type": payload.content_type},
                          timeout=60)
    response.raise_for_status()
    return response.json()["segments"]


def agreement_payloads(input_h: int, input_w: int) -> list[Payload]:
    """What both paths are compared on: ab's photo, and a 4:3 scene 1.5x the model's width, which the
    CPU path reads no JPEG draft of (half its size would be smaller than the model's content; the
    device path decodes at full size, so only there can the two agree exactly)."""
    width = input_w * 3 // 2
    height = width * 3 // 4
    small = io.BytesIO()
    synthetic_scene(width, height, seed=1).save(small, format="JPEG", quality=90)
    return [photo(), Payload(f"scene_{width}x{height}.jpg", "image/jpeg", small.getvalue())]


def ab_round(server: SegserveProcess, payload: Payload, requests: int, time_limit_s: float, gpu: bool) -> dict:
    cpu_before = server_cpu_s(server.process.pid)
    with GpuSampler(gpu) as sampler:
        report = run_ab(segment_url(server.url, MODEL), payload, requests=requests, concurrency=CONCURRENCY,
                        time_limit_s=time_limit_s)
    done = report["complete_requests"]
    if not done or report["failed_requests"] or report["non_2xx_responses"]:
        raise RuntimeError(f"ab: {done} complete, {report['failed_requests']} failed, {report['non_2xx_responses']} non-2xx")
    percentiles = report["percentiles_ms"]
    figures = {
        "requests": done,
        "images_per_s": report["requests_per_second"],
        "p50_ms": percentiles.get(50),
        "p99_ms": percentiles.get(99),
        "server_cpu_ms_per_request": 1000 * (server_cpu_s(server.process.pid) - cpu_before) / done,
        "gpu_util_pct": sampler.mean(),
        "gpu_util_source": sampler.source,
        "command": report["command"],
    }
    missing = [k for k in ("images_per_s", "p50_ms", "p99_ms") if not isinstance(figures[k], (int, float)) or figures[k] <= 0]
    if missing:
        raise RuntimeError(f"ab's report did not parse: {missing} missing ({report})")
    return figures


# -- the report --------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    rows = [
        "| data path | served as | images/s | p50 ms | p99 ms | server CPU ms/request | GPU util % |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in result["paths"].items():
        f = run["figures"]
        rows.append(f"| {name} | {run['served_as']} | {fmt(f['images_per_s'])} | {fmt(f['p50_ms'])} | {fmt(f['p99_ms'])} | "
                    f"{fmt(f['server_cpu_ms_per_request'], 2)} | {fmt(f['gpu_util_pct'], 0)} ({f['gpu_util_source']}) |")
    agreement = ", ".join(f"{name} {share:.4f}" for name, share in result["agreement"].items())
    return "\n".join([
        f"`make gpu-check` at {result['revision']} on {result['machine']} ({result['mode']}): {result['model']}, "
        f"torch backend ({result['dtype']}), `{result['command']}`.",
        "",
        *rows,
        "",
        f"Label maps of the two paths agree on {agreement} of pixels. Phases: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["phases"].items()) + ".",
    ])


def replace_section(path: Path, block: str) -> None:
    """The text between the gpu-check markers becomes ``block`` (the markers are appended when absent)."""
    text = path.read_text()
    section = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs"
    except ImportError:
        pass
    return f"{os.cpu_count()} CPUs, no GPU"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every phase on CPU, tiny request counts, no docs written "
                                                                 "(automatic without CUDA)")
    parser.add_argument("--requests", type=int, default=4000, help="ab requests per data path on the GPU")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help=f"where {MODEL} is (exported there first when absent)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the file whose gpu-check section is replaced")
    args = parser.parse_args(argv)
    dry = args.dry_run or not cuda_available()
    if dry and not args.dry_run:
        print("gpu-check: no CUDA device: dry run on CPU (plumbing only, no docs written)", flush=True)
    mode = "dry" if dry else "gpu"
    requests, warmup = (2 * CONCURRENCY, CONCURRENCY) if dry else (args.requests, 400)
    budget = Budget(TOTAL_BUDGET_S)
    payload = photo()
    result: dict = {"mode": "dry run, CPU" if dry else "CUDA", "machine": machine(), "revision": checkout_revision(),
                    "paths": {}, "agreement": {}, "phases": budget.spent}
    with tempfile.TemporaryDirectory(prefix="segserve-gpu-check-") as tmp, contextlib.ExitStack() as stack:
        with budget.phase("model", 120):
            args.repository.mkdir(parents=True, exist_ok=True)
            # the dry run: one engine instance, no warm-up -- it checks the plumbing, quickly
            repository = prepare_repository(args.repository, Path(tmp) / "repository", "cpu" if dry else "cuda", 1 if dry else None)
            spec = load_config(repository / MODEL).input
            result["model"] = f"{MODEL} {spec.height}x{spec.width}"
        with budget.phase("start both servers", 120) as limit_s:
            servers = {name: SegserveProcess(repository, Path(tmp) / f"server-{name}.log", models=[MODEL], ready_timeout_s=limit_s,
                                             env={"SEGSERVE_BACKEND": "torch", "SEGSERVE_DATA_PATH": name,
                                                  "SEGSERVE_WARMUP": str(not dry).lower()})
                       for name in ("device", "cpu")}
            with ThreadPoolExecutor(len(servers)) as pool:  # their start-ups overlap
                started = {name: pool.submit(server.start) for name, server in servers.items()}
            for name, server in servers.items():
                stack.callback(server.stop)
                started[name].result()
                info = model_info(server)
                want = "cpu" if name == "cpu" else f"device:{'cpu' if dry else 'cuda'}"
                if not info["data_path"].startswith(want) or info["backend"] != "torch":
                    raise RuntimeError(f"the {name} server serves {MODEL} on {info['backend']}, data path {info['data_path']}")
                result["paths"][name] = {"served_as": f"{info['backend']} on {info['device']}, data path {info['data_path']}"}
        with budget.phase("agreement", 30):
            ab_photo, undrafted = agreement_payloads(spec.height, spec.width)
            for check in (ab_photo, undrafted):
                maps = [label_map(servers[name], check) for name in ("device", "cpu")]
                result["agreement"][check.name] = float((maps[0] == maps[1]).mean()) if maps[0].shape == maps[1].shape else 0.0
            share = result["agreement"][undrafted.name]
            if share < MIN_AGREEMENT[mode]:
                raise RuntimeError(f"the data paths' label maps for {undrafted.name} agree on {share:.4f} of pixels only")
            if dry and segments(servers["device"], undrafted) != segments(servers["cpu"], undrafted):
                raise RuntimeError(f"the data paths' JSON segments differ for {undrafted.name}")
        for name, server in servers.items():
            with budget.phase(f"load {name} path", 60 if dry else 120) as limit_s:
                run_ab(segment_url(server.url, MODEL), payload, requests=warmup, concurrency=CONCURRENCY, time_limit_s=limit_s / 4)
                result["paths"][name]["figures"] = ab_round(server, payload, requests, limit_s / 2, gpu=not dry)
    result["dtype"] = "float32 on CPU" if dry else "fp16 on CUDA"
    result["command"] = re.sub(r" -p \S+ ", f" -p {payload.name} ", result["paths"]["device"]["figures"]["command"])
    text = markdown(result)
    print(text)
    if not dry:
        replace_section(args.docs, text)
        print(f"gpu-check: {args.docs} updated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
