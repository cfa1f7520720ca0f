"""segserve against the servers a user would pick instead (`make bench-peers`).

Every system serves the SAME exported ONNX file and does the same work per request: decode the
JPEG, letterbox to the model input, ONNX Runtime on CPU, restore to the original size, one COCO
RLE per class present (Mask R-CNN: per instance), JSON shaped like segserve's. The peers (loadtest/peers/*.py) are written
the way their own docs show and run as scripts, each in its own virtualenv that this benchmark
creates under ``.cache/peers/<name>`` (never a dependency of segserve; segserve never imports them):

* ``naive``: FastAPI + uvicorn written by hand (plain PIL, one ONNX Runtime session with its
  default threads, no batching, the endpoint's work in FastAPI's thread pool),
* ``litserve``: LitServe, a ``LitAPI`` with ``max_batch_size``/``batch_timeout`` and
  ``workers_per_device`` worker processes,
* ``pytriton``: NVIDIA PyTriton, the real Triton core with a Python model (``@batch``, a
  ``DynamicBatcher``, one infer function per model instance), driven over KServe v2 HTTP with the
  binary-data extension (the JPEG as one BYTES element, the JSON back as one BYTES element),
* ``ray``: Ray Serve, a deployment (``num_replicas``, one CPU each) whose ``@serve.batch`` method runs the
  session, behind Ray Serve's HTTP proxy (a plain ``__call__`` on the Starlette request, the raw JPEG body);
  Ray itself bounded to this machine (``ray.init(num_cpus=cores)``, no dashboard, usage stats off),
* ``bentoml``: BentoML, a ``@bentoml.service`` with ``workers`` processes and one
  ``@bentoml.api(batchable=True)`` method (adaptive batching; the image as a multipart file, a one-element
  JSON list back).

Each peer also runs as ``<name>+codecs``: the same script in the same virtualenv, its work done by
segserve's own codec functions (peer_common's "segserve" work: draft-scale decode, Letterbox, the
run-based RLE, orjson where the script renders the body, segserve's ONNX Runtime session options),
so that against segserve it differs in the serving layer alone. Those functions are this checkout's
``service/``, linked as the package ``segserve`` into ``.cache/peers/segserve-codecs/src``, with the
libraries they import (CODEC_REQUIREMENTS) installed once into ``.cache/peers/segserve-codecs/deps``;
peer_common appends both to sys.path after the peer's site-packages. Nothing of segserve's runtime
is installed into a peer's virtualenv.

Models: the bundled ``shapes_lraspp`` and ``shapes_maskrcnn`` as `make models` exports them, and
bench_overhead's trivial model. Mask R-CNN is served by segserve on its split path (backbone.onnx on
ONNX Runtime, the torch RPN/RoI heads from weights.pt, the box paste to RLE); no peer runs that
split the way its docs show without segserve's code for the non-ONNX part, so its rows are the
``+codecs`` variants only, at lower concurrency and fewer requests (``--instance-*``).

Steps: export/generate the models; install each peer's virtualenv and the codec folder (skipped,
with the reason, when that fails); start every system on the model; check each peer's label maps
against segserve's on the same images (% of equal pixels, RLEs decoded with pycocotools; instance
answers painted best on top); then, holding ``/tmp/segserve-bench.lock``, interleaved rounds: the
raw engine (bench_service.RawEngine, the model's own instances on a preprocessed image in memory;
semantic models only), then each system under ``ab -n N -c C -k -l`` at each concurrency, then the
project's open loop (generators.open_loop) at a fixed arrival rate: ``--open-loop-fraction`` (0.8)
of segserve's best closed-loop req/s in that round, the same rate for every system. Medians over
rounds: req/s, p50/p95/p99, failures, server CPU ms per request (utime + stime of the server's whole
process tree, /proc), ratio to segserve and to the raw engine; the open loop's achieved req/s,
percentiles and failures. Writes ``bench_peers.{json,md,png}``.

    python -m segserve_loadtest.bench_peers --out docs/bench [--rounds 2] [--requests 300] [--systems naive,naive+codecs]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sysconfig
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np

from segserve_loadtest.ab import AbError, run_ab, segment_url
from segserve_loadtest.payloads import Payload, synthetic_scene
from segserve_loadtest.server import SegserveProcess, free_port

PEERS_DIR = Path(__file__).resolve().parent / "peers"
LOCK_FILE = "/tmp/segserve-bench.lock"
# The peers run the same onnxruntime / numpy / Pillow / pycocotools releases as segserve (pyproject.toml).
COMMON = ["onnxruntime==1.31.1", "numpy==2.4.6", "pillow==13.0.0", "pycocotools==2.0.11"]
RAY_VERSION = "2.60.0"
BENTOML_VERSION = "1.4.40"
# What segserve's codecs import besides COMMON (service/codecs, contract, graphs for the Mask R-CNN heads), at
# segserve's own pins: installed once into one folder that every "+codecs" variant appends to its sys.path
# (peer_common does, after the peer's site-packages: the peer's own releases win where both have a package)
CODEC_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "orjson==3.13.0", "PyYAML==6.0.3", "pydantic==2.14.3"]
CODECS = "+codecs"  # the name suffix of a peer's variant that shares segserve's codec code
BUNDLED = "shapes_lraspp"
INSTANCE = "shapes_maskrcnn"
TRIVIAL = "trivial"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Peer:
    name: str
    title: str
    requirements: list[str]
    script: str
    # "segment" (POST the image), "multipart" (the image as the form field "image"), "multipart-list" (as one file
    # of the form field "images", a one-element JSON list back: a batchable BentoML API), "kserve-binary"
    protocol: str
    settings: str  # what was chosen for this machine, for the report
    args: list[str] = field(default_factory=list)
    common: list[str] = field(default_factory=lambda: list(COMMON))
    env: dict[str, str] = field(default_factory=dict)
    path: str = "/segment"  # where the images go
    ready_path: str = "/healthz"  # answers 200 once the model is loaded
    own_json: bool = False  # the script takes --own-json: it can render the body with the work's dumps itself
    codecs: bool = False  # the variant doing its work with segserve's codecs (peer_common's "segserve" work)
    venv: str = ""  # the virtualenv's folder under the cache: the plain peer's (a variant shares it)

    def __post_init__(self) -> None:
        self.venv = self.venv or self.name


def with_codecs(peer: Peer) -> Peer:
    """``peer``'s variant that calls segserve's codec functions for the same work (serving layer alone differs):
    the same script and virtualenv, segserve's ``service/`` and CODEC_REQUIREMENTS on its path."""
    json_note = ("the body rendered by segserve.codecs.jsonbytes (--own-json)" if peer.own_json or peer.protocol == "kserve-binary"
                 else "the body still rendered by the framework's own JSON encoder")
    return replace(peer, name=peer.name + CODECS, title=f"{peer.title} + segserve codecs", codecs=True,
                   args=[*peer.args, *(["--own-json"] if peer.own_json else [])],
                   settings=f"as {peer.name}, with segserve's codecs (draft decode, Letterbox, run-based RLE; Mask R-CNN: "
                            f"rcnn_input, the torch heads, box paste) and its ONNX Runtime session options (no spinning); {json_note}")


@dataclass(frozen=True)
class Batching:
    """The batches the peers that batch form: segserve's own for the model (its config.yaml's preferred batch and
    window, which `segserve tune` chose on this machine), so no system is measured at batch sizes it was not
    given; BentoML keeps its adaptive window under its default latency bound."""

    size: int = 8
    window_s: float = 0.004

    @classmethod
    def of(cls, repository: Path, name: str) -> "Batching":
        from segserve.contract.model_config import load_config

        config = load_config(repository / name)
        return cls(config.batch_size, config.dynamic_batching.max_queue_delay_ms / 1000)


def peers(cores: int, batching: Batching = Batching()) -> dict[str, Peer]:
    """Every peer as its docs show it, then each one's variant sharing segserve's codecs (``<name>+codecs``)."""
    size, window_s, window_us = batching.size, batching.window_s, round(batching.window_s * 1e6)
    # LitServe 0.2.19 with batch_timeout=0 polls its queue without blocking in a loop (loops/base.py
    # collate_requests, get_nowait; simple_loops.py `if not batches: continue`): a core spent per idle
    # worker. 1 ms is the poll step its own timed path blocks for, so the window stays as short as it can be.
    litserve_window_s = max(window_s, 0.001)
    plain = {
        "naive": Peer("naive", "naive FastAPI + uvicorn", ["fastapi==0.165.0", "uvicorn[standard]==0.54.0"], "naive_fastapi.py", "segment",
                      "1 uvicorn process, 1 ONNX Runtime session (default intra-op threads = cores), each request in FastAPI's "
                      "thread pool, no batching", own_json=True),
        # python-multipart: LitServe parses the multipart upload with Starlette, which needs it (not a LitServe dependency)
        "litserve": Peer("litserve", "LitServe 0.2.19", ["litserve==0.2.19", "python-multipart==0.0.34"], "litserve_server.py", "multipart",
                         f"{cores} worker processes (workers_per_device={cores}, accelerator=cpu), 1 intra-op thread each, "
                         f"max_batch_size={size}, batch_timeout={litserve_window_s:g} s",
                         ["--workers", str(cores), "--threads", "1", "--max-batch-size", str(size), "--batch-timeout", str(litserve_window_s)],
                         path="/predict", ready_path="/health"),
        "pytriton": Peer("pytriton", "PyTriton 0.7.0 (Triton core)", ["nvidia-pytriton==0.7.0"], "pytriton_server.py", "kserve-binary",
                         f"1 model instance with {cores} intra-op threads, max_batch_size={size}, DynamicBatcher max_queue_delay {window_us} us "
                         f"({cores} instances, one infer function each, do not load on this loaded machine: the second instance's "
                         "stub waits 1 s, hard-coded in pytriton/proxy/communication.py, for the first one's handshake socket, "
                         "and gives up)",
                         ["--instances", "1", "--threads", str(cores), "--max-batch-size", str(size), "--max-queue-delay-us", str(window_us)],
                         # nvidia-pytriton 0.7.0 requires numpy < 2: pip picks its numpy
                         [r for r in COMMON if not r.startswith("numpy")],
                         # Triton's Python-backend stub links the system libpython3.11 (Debian's) but runs this
                         # interpreter's standard library: a mismatch (RLock._recursion_count) unless it finds ours first
                         {"LD_LIBRARY_PATH": ":".join(filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")]))}),
        "ray": Peer("ray", f"Ray Serve {RAY_VERSION}", [f"ray[serve]=={RAY_VERSION}"], "ray_serve_server.py", "segment",
                    f"ray.init(num_cpus={cores}, include_dashboard=False), usage stats off; {cores} replicas x 1 CPU "
                    f"(ray_actor_options), 1 intra-op thread each, @serve.batch(max_batch_size={size}, batch_wait_timeout_s={window_s:g}), "
                    f"max_ongoing_requests={2 * size} per replica; Ray's HTTP proxy, the raw JPEG body",
                    ["--cpus", str(cores), "--replicas", str(cores), "--threads", "1", "--max-batch-size", str(size),
                     "--batch-wait-timeout", str(window_s)],
                    # the replicas are Ray worker processes started by the raylet: they find peer_common on PYTHONPATH
                    env={"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(PEERS_DIR)}, own_json=True),
        "bentoml": Peer("bentoml", f"BentoML {BENTOML_VERSION}", [f"bentoml=={BENTOML_VERSION}"], "bentoml_server.py", "multipart-list",
                        f"@bentoml.service(workers={cores}), 1 intra-op thread each, @bentoml.api(batchable=True, max_batch_size={size}, "
                        "max_latency_ms=60000 = BentoML's default: the batch window is its adaptive dispatcher's), the image as a "
                        "multipart file (a pathlib.Path to the API)",
                        ["--workers", str(cores), "--threads", "1", "--max-batch-size", str(size), "--max-latency-ms", "60000"],
                        ready_path="/readyz"),
    }
    return {**plain, **{variant.name: variant for variant in map(with_codecs, plain.values())}}


# -- virtualenvs -----------------------------------------------------------------------------
def venv_stamp(cache: Path, peer: Peer) -> Path:
    """The file that marks the peer's virtualenv as filled with exactly its current requirements."""
    requirements = [*peer.requirements, *peer.common]
    return cache / peer.venv / (".installed-" + hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12])


def installed_python(cache: Path, peer: Peer) -> Path | None:
    """The peer's virtualenv python when that virtualenv is already complete, else None (installs nothing)."""
    return cache / peer.venv / "bin" / "python" if venv_stamp(cache, peer).is_file() else None


def ensure_venv(cache: Path, peer: Peer, log: Path) -> Path:
    """The peer's virtualenv (created and filled once; a stamp of its requirements marks it done):
    returns its python. Raises RuntimeError with pip's tail when the install fails."""
    if (python := installed_python(cache, peer)) is not None:
        return python
    requirements = [*peer.requirements, *peer.common]
    venv = cache / peer.venv
    python = venv / "bin" / "python"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=subprocess.STDOUT)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if "is ignored" not in line][-8:]
        raise RuntimeError(f"pip install {' '.join(requirements)} failed ({done.returncode}): " + " | ".join(tail))
    for old in venv.glob(".installed-*"):
        old.unlink()
    venv_stamp(cache, peer).touch()
    return python


def codec_stamp(cache: Path) -> Path:
    """The file that marks the variants' codec folder as filled with exactly CODEC_REQUIREMENTS."""
    return cache / "segserve-codecs" / (".installed-" + hashlib.sha256("\n".join(CODEC_REQUIREMENTS).encode()).hexdigest()[:12])


def installed_codec_path(cache: Path) -> str | None:
    """ensure_codec_path's answer when that folder is already complete, else None (installs nothing)."""
    root = (cache / "segserve-codecs").absolute()
    if not codec_stamp(cache).is_file() or not (root / "src" / "segserve").is_dir():
        return None
    return os.pathsep.join([str(root / "src"), str(root / "deps")])


def ensure_codec_path(cache: Path, log: Path) -> str:
    """What a "+codecs" variant appends to its sys.path (PEER_CODEC_PATH, read by peer_common): a folder whose
    ``segserve`` is a link to this checkout's ``service/`` (segserve's code as it is here, nothing installed), and
    CODEC_REQUIREMENTS installed once with ``pip --target`` (a stamp marks it done). Raises RuntimeError with
    pip's tail when that install fails."""
    import segserve

    root, stamp = (cache / "segserve-codecs").absolute(), codec_stamp(cache)  # absolute: the peers run in loadtest/peers
    source, deps = root / "src", root / "deps"
    link = source / "segserve"
    source.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or link.resolve() != Path(segserve.__file__).resolve().parent:
        link.unlink(missing_ok=True)
        link.symlink_to(Path(segserve.__file__).resolve().parent, target_is_directory=True)
    if not stamp.is_file():
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", str(deps), *CODEC_REQUIREMENTS],
                                  stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            tail = [line for line in log.read_text(errors="replace").splitlines() if "is ignored" not in line][-8:]
            raise RuntimeError(f"pip install --target {deps} {' '.join(CODEC_REQUIREMENTS)} failed ({done.returncode}): " + " | ".join(tail))
        for old in root.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return os.pathsep.join([str(source), str(deps)])


# -- processes -------------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat's ppid)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def state(pid: int) -> str | None:
    """``pid``'s state letter in /proc (R, S, T, Z...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is not a zombie)."""
    return state(pid) not in ("Z", None)


def tree_cpu_s(pid: int) -> float:
    """utime + stime of ``pid``'s live process tree, in seconds."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Paused:
    """Systems held stopped (SIGSTOP on their whole process tree) while another is measured, so that nothing idle
    runs beside it: LitServe's workers and main process poll their queues every millisecond when idle (its
    collate_requests), Ray's GCS, raylet and agents keep their timers. ``run(name)`` resumes one system for the
    block, then stops it again; everything is resumed on exit (a stopped process cannot act on SIGTERM)."""

    SETTLE_S = 2.0  # after a resume: a system's timers that came due while it was stopped fire before its measurement

    def __init__(self, pids: dict[str, int]):
        self._pids = pids
        self._stopped: dict[str, list[int]] = {}

    def _signal(self, members: list[int], sig: int) -> None:
        for member in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, sig)
        if sig == signal.SIGSTOP:  # delivered, not yet done: wait until each one has stopped (or is gone)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and any(state(m) not in ("T", None) for m in members):
                time.sleep(0.01)

    def stop(self, name: str) -> None:
        if name not in self._stopped:
            self._stopped[name] = process_tree(self._pids[name])
            self._signal(self._stopped[name], signal.SIGSTOP)

    def resume(self, name: str) -> None:
        if name in self._stopped:
            self._signal(self._stopped.pop(name), signal.SIGCONT)

    def __enter__(self) -> "Paused":
        for name in self._pids:
            self.stop(name)
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self._stopped):
            self.resume(name)

    @contextlib.contextmanager
    def run(self, name: str):
        self.resume(name)
        time.sleep(self.SETTLE_S)
        try:
            yield
        finally:
            self.stop(name)


class PeerProcess:
    """A peer script in its virtualenv on free loopback ports; ``url`` is where the load goes."""

    def __init__(self, peer: Peer, python: Path, model_json: Path, log_path: Path, ready_timeout_s: float = 240.0,
                 codec_path: str = ""):
        # absolute (the peer runs in loadtest/peers/), but not resolved: a venv's python is a symlink that must stay one
        self.peer, self.python, self.model_json = peer, Path(os.path.abspath(python)), Path(os.path.abspath(model_json))
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.codec_path = codec_path  # ensure_codec_path's, for a "+codecs" variant ("" where segserve is importable anyway)
        self.port = free_port()
        base = f"http://127.0.0.1:{self.port}"
        if peer.protocol == "kserve-binary":
            self.ports = ["--http-port", str(self.port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
            self.url, self.ready_url = f"{base}/v2/models/segment/infer", f"{base}/v2/models/segment/ready"
        else:
            self.ports = ["--port", str(self.port)]
            self.url, self.ready_url = base + peer.path, base + peer.ready_path
        self.process: subprocess.Popen | None = None

    def start(self) -> "PeerProcess":
        command = [str(self.python), str(PEERS_DIR / self.peer.script), "--model-json", str(self.model_json), *self.ports, *self.peer.args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # its own session: stop() signals the whole group (LitServe's workers, Triton's processes)
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=PEERS_DIR, start_new_session=True,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.peer.env,
                                                 **({"PEER_CODEC_PATH": self.codec_path} if self.peer.codecs else {})})
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.peer.name} exited with {self.process.returncode} before ready:\n{self.log_tail()}")
            try:
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.peer.name} not ready within {self.ready_timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the peer's process group; whatever of its process tree still runs after ``grace_s``
        (BentoML's workers and Ray's actors have process groups of their own and may outlive the
        script for a while) gets SIGKILL, so that nothing of it runs into the next measurement."""
        if self.process is None or self.process.poll() is not None:
            return
        tree = process_tree(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        while any(map(alive, tree)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for member in filter(alive, tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        # SIGKILL is delivered, not yet done: on a loaded machine a killed process can take a moment to exit
        killed_by = time.monotonic() + 5.0
        while any(map(alive, tree)) and time.monotonic() < killed_by:
            time.sleep(0.05)
        self.process.wait()

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int:
        return self.process.pid


# -- models ----------------------------------------------------------------------------------
# the bundled models the peers serve, exported as `make models` exports them (their shipped serving settings included)
EXPORTS = (BUNDLED, INSTANCE)


def ensure_bundled(repository: Path, name: str = BUNDLED) -> None:
    """``make models``' own export of the bundled models (`segserve export --bundled`), unless ``name`` is there."""
    if (repository / name / "config.yaml").is_file():
        return
    command = [sys.executable, "-m", "segserve", "export", "--bundled", "--repository", str(repository), "--skip-existing"]
    subprocess.run(command, check=True)


def model_json(repository: Path, name: str, out: Path, codecs: str = "pil") -> Path:
    """What a peer needs to serve the model exactly as segserve does: the ONNX file segserve
    serves, its input/output names, input size, pad value and class names; the model's folder and
    version (the codec-sharing work reads segserve's config.yaml and, for Mask R-CNN, weights.pt);
    ``codecs``: "pil" (the peers' own way) or "segserve" (peer_common's work for the variants)."""
    from segserve.contract.model_config import latest_version, load_config

    folder = repository / name
    config = load_config(folder)
    version_dir = folder / str(latest_version(folder))
    onnx = version_dir / config.onnxruntime.model_file
    spec = {"name": name, "task": config.task.value, "codecs": codecs, "folder": str(folder.resolve()),
            "version_dir": str(version_dir.resolve()), "onnx": str(onnx.resolve()), "input": config.input.name,
            "output": config.output.name, "height": config.input.height, "width": config.input.width,
            "pad_value": list(config.input.pad_value), "classes": list(config.classes)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec, indent=2))
    return out


def serving_settings(repository: Path, name: str = BUNDLED) -> str:
    """The exported config.yaml's serving settings, as the report states them."""
    from segserve.contract.model_config import load_config
    from segserve.engine.onnxruntime import default_threads

    config = load_config(repository / name)
    threads = config.onnxruntime.intra_op_threads or f"auto = {default_threads(config.instances)}"
    solo = f", a lone call on {config.onnxruntime.solo_threads or 'one per CPU'}"
    return (f"{config.instances} engine instances x {threads} intra-op threads{solo}, batches of up to {config.batch_size} "
            f"(max_batch_size {config.max_batch_size}), queue delay {config.dynamic_batching.max_queue_delay_ms:g} ms")


def photo(width: int = 640, height: int = 480, seed: int = 0) -> Payload:
    buffer = io.BytesIO()
    synthetic_scene(width, height, seed=seed).save(buffer, format="JPEG", quality=85)
    return Payload(f"photo_{width}x{height}.jpg", "image/jpeg", buffer.getvalue())


# -- KServe v2 binary-data extension -------------------------------------------------------------
def kserve_binary_request(image: bytes) -> tuple[bytes, dict[str, str]]:
    """One BYTES element (4-byte little-endian length + the JPEG) after a JSON header; the output
    asked back as binary too. Returns (body, headers)."""
    element = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}],
                         "outputs": [{"name": "result", "parameters": {"binary_data": True}}]}).encode()
    return header + element, {"Inference-Header-Content-Length": str(len(header))}


def kserve_binary_result(body: bytes, header_length: int) -> dict:
    """The segserve-shaped JSON out of a binary-data KServe response (one BYTES element)."""
    binary = body[header_length:]
    (size,) = struct.unpack("<I", binary[:4])
    return json.loads(binary[4 : 4 + size])


BOUNDARY = "segserve-bench-peers-boundary"


def multipart(image: Payload, field_name: str = "image") -> Payload:
    """``image`` as one multipart/form-data file field (what `curl -F image=@photo.jpg` sends)."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{image.name}\"\r\n"
            f"Content-Type: {image.content_type}\r\n\r\n").encode() + image.body + f"\r\n--{BOUNDARY}--\r\n".encode()
    return Payload(image.name + ".multipart", f"multipart/form-data; boundary={BOUNDARY}", body)


class Target:
    """How to post one image to a system and read its answer, and what ab sends."""

    def __init__(self, name: str, url: str, protocol: str, pid: int, settings: str):
        self.name, self.url, self.protocol, self.pid, self.settings = name, url, protocol, pid, settings

    def load(self, image: Payload) -> tuple[Payload, dict[str, str] | None]:
        if self.protocol == "kserve-binary":
            body, headers = kserve_binary_request(image.body)
            return Payload("kserve_binary.bin", "application/octet-stream", body), headers
        if self.protocol == "multipart":
            return multipart(image), None
        if self.protocol == "multipart-list":
            return multipart(image, "images"), None
        return image, None

    def segment(self, client: httpx.Client, image: Payload) -> dict:
        payload, headers = self.load(image)
        response = client.post(self.url, content=payload.body, headers={"Content-Type": payload.content_type, **(headers or {})})
        response.raise_for_status()
        if self.protocol == "kserve-binary":
            return kserve_binary_result(response.content, int(response.headers["Inference-Header-Content-Length"]))
        if self.protocol == "multipart-list":
            (result,) = response.json()
            return result
        return response.json()


# -- agreement -------------------------------------------------------------------------------------
def label_map(result: dict) -> np.ndarray:
    """A segserve-shaped JSON answer -> (h, w) class ids: a semantic answer's segments (pixels no segment
    covers: -1), or an instance answer's masks painted from the lowest score up (the best on top, as
    segserve's instance-id PNG; pixels no instance covers: 0)."""
    from pycocotools import mask as mask_utils

    if "instances" in result:
        labels = np.zeros((result["height"], result["width"]), dtype=np.int32)
        for instance in result["instances"][::-1]:
            rle = {"size": instance["mask"]["size"], "counts": instance["mask"]["counts"].encode()}
            labels[mask_utils.decode(rle).astype(bool)] = instance["class_id"]
        return labels
    labels = np.full((result["height"], result["width"]), -1, dtype=np.int32)
    for segment in result["segments"]:
        rle = {"size": segment["mask"]["size"], "counts": segment["mask"]["counts"].encode()}
        labels[mask_utils.decode(rle).astype(bool)] = segment["class_id"]
    return labels


def agreement(reference: dict, other: dict) -> float:
    """Share of pixels with the same class in both answers (0 when the sizes differ)."""
    a, b = label_map(reference), label_map(other)
    return float((a == b).mean()) if a.shape == b.shape else 0.0


def agreement_images() -> list[Payload]:
    return [photo(640, 480, 0), photo(640, 480, 1), photo(500, 375, 2), photo(256, 320, 3)]


def check_agreement(targets: list[Target], images: list[Payload]) -> dict[str, dict]:
    """Per peer: % of equal pixels with segserve's label maps, per image and overall."""
    with httpx.Client(timeout=60) as client:
        answers = {t.name: [t.segment(client, image) for image in images] for t in targets}
    reference = answers["segserve"]
    out = {}
    for name, results in answers.items():
        if name == "segserve":
            continue
        per_image = [agreement(ref, res) for ref, res in zip(reference, results)]
        pixels = [ref["width"] * ref["height"] for ref in reference]
        out[name] = {"per_image": per_image, "images": [i.name for i in images],
                     "equal_pixels": float(np.average(per_image, weights=pixels))}
    return out


# -- timing ------------------------------------------------------------------------------------------
def measure_level(target: Target, image: Payload, requests: int, concurrency: int) -> dict:
    payload, headers = target.load(image)
    before = tree_cpu_s(target.pid)
    try:
        report = run_ab(target.url, payload, requests=max(requests, 4 * concurrency), concurrency=concurrency, headers=headers)
    except AbError as err:
        return {"concurrency": concurrency, "error": str(err)}
    cpu = tree_cpu_s(target.pid) - before
    p = report["percentiles_ms"]
    done = report["complete_requests"]
    return {"concurrency": concurrency, "requests": done, "failed": report["failed_requests"], "non_2xx": report["non_2xx_responses"],
            "requests_per_s": report["requests_per_second"], "p50_ms": p.get(50), "p95_ms": p.get(95), "p99_ms": p.get(99),
            "server_cpu_ms_per_request": 1000 * cpu / max(1, done), "keep_alive_requests": report["keep_alive_requests"],
            "command": report["command"]}


def measure_rate(target: Target, image: Payload, rate_rps: float, seconds: float, timeout_s: float = 60.0) -> dict:
    """The project's open loop (generators.open_loop: request i sent at i / rate whatever came back, HTTP/1.1
    keep-alive, latency from the intended send time) at ``rate_rps`` for ``seconds``: achieved throughput (200s
    completed inside the window), p50/p95/p99, failures (non-200s, exceptions, unfinished), server CPU per request."""
    import asyncio

    from segserve_loadtest.generators import open_loop

    payload, headers = target.load(image)
    before = tree_cpu_s(target.pid)
    stats = asyncio.run(open_loop(target.url, payload, rate_rps, seconds, max_requests=max(1, round(rate_rps * seconds)),
                                  timeout_s=timeout_s, max_connections=64, headers=headers))
    cpu = tree_cpu_s(target.pid) - before
    recorder = stats.recorder
    latency = recorder.latency_ms()
    return {"rate_rps": rate_rps, "offered_rps": stats.offered_rps, "requests": recorder.requests, "ok": recorder.ok,
            "requests_per_s": recorder.ok_in_window / stats.window_s, "p50_ms": latency["p50"], "p95_ms": latency["p95"],
            "p99_ms": latency["p99"], "failed": recorder.requests - recorder.ok, "statuses": dict(recorder.statuses),
            "exceptions": dict(recorder.exceptions), "max_send_lag_ms": stats.max_send_lag_ms,
            "server_cpu_ms_per_request": 1000 * cpu / max(1, recorder.ok),
            # the generator is Python in this process, on the same cores: where it is the bottleneck, this shows it
            "client_cpu_ms_per_request": 1000 * stats.client_cpu_s / max(1, recorder.requests)}


def open_loop_rate(cells: dict[str, dict], fraction: float) -> float | None:
    """The round's fixed arrival rate: ``fraction`` of segserve's best closed-loop throughput in that round
    (its saturation as ab measured it), the same for every system."""
    best = [cell["requests_per_s"] for cell in cells.values() if "requests_per_s" in cell]
    return fraction * max(best) if best else None


def raw_engine_round(raw, seconds: float) -> dict:
    """The raw engine at batch 1 and 2 (the model's instances in parallel); the better one counts."""
    rows = [raw.measure(size, seconds) for size in (1, 2) if size <= raw.max_batch_size]
    best = max(rows, key=lambda r: r["images_per_s"])
    return {"images_per_s": best["images_per_s"], "batch_size": best["batch_size"], "instances": best["instances"], "rows": rows}


def summarise(rounds: list[dict], systems: list[str], levels: list[int]) -> dict:
    """Medians over rounds per system and level, plus the ratios (each round's ratio, then the median)."""
    raw = [r["raw_engine"]["images_per_s"] for r in rounds if r.get("raw_engine")]
    table: dict[str, dict[int, dict]] = {}
    for name in systems:
        table[name] = {}
        for c in levels:
            cells = [r["systems"][name][str(c)] for r in rounds if str(c) in r["systems"].get(name, {})]
            good = [cell for cell in cells if "error" not in cell]
            if not good:
                table[name][c] = {"error": cells[0]["error"] if cells else "not measured"}
                continue
            row = {key: statistics.median(cell[key] for cell in good)
                   for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms_per_request")}
            row["failed"] = sum(cell["failed"] + cell["non_2xx"] for cell in good)
            row["errors"] = len(cells) - len(good)
            ratios_segserve, ratios_raw = [], []
            for r in rounds:
                mine = r["systems"].get(name, {}).get(str(c), {})
                theirs = r["systems"].get("segserve", {}).get(str(c), {})
                if "requests_per_s" in mine:
                    if r.get("raw_engine"):
                        ratios_raw.append(mine["requests_per_s"] / r["raw_engine"]["images_per_s"])
                    if "requests_per_s" in theirs:
                        ratios_segserve.append(mine["requests_per_s"] / theirs["requests_per_s"])
            row["vs_segserve"] = statistics.median(ratios_segserve) if ratios_segserve else None
            row["vs_raw_engine"] = statistics.median(ratios_raw) if ratios_raw else None
            table[name][c] = row
    return {"raw_engine_images_per_s": statistics.median(raw) if raw else None, "raw_engine_rounds": raw, "table": table,
            "open_loop": summarise_open_loop(rounds, systems)}


def summarise_open_loop(rounds: list[dict], systems: list[str]) -> dict[str, dict]:
    """Medians over rounds of each system's fixed-arrival-rate phase (rounds without one are left out)."""
    out = {}
    for name in systems:
        cells = [r["open_loop"][name] for r in rounds if name in r.get("open_loop", {})]
        if not cells:
            continue
        row = {key: statistics.median(cell[key] for cell in cells)
               for key in ("rate_rps", "requests_per_s", "server_cpu_ms_per_request")}
        # percentiles: None when no request succeeded; the client's figures: absent from older bench_peers.json files
        for key in ("p50_ms", "p95_ms", "p99_ms", "client_cpu_ms_per_request", "max_send_lag_ms"):
            values = [cell[key] for cell in cells if cell.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        row["failed"] = sum(cell["failed"] for cell in cells)
        row["requests"] = sum(cell["requests"] for cell in cells)
        out[name] = row
    return out


# -- report ------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def model_markdown(model: dict) -> list[str]:
    summary, levels = model["summary"], model["levels"]
    raw = (model["rounds"][0]["raw_engine"] if model["rounds"] else None) or {}
    engine = (f"Raw engine: {raw.get('instances', '?')} ONNX Runtime sessions in parallel on a preprocessed image in memory, best of "
              f"batch 1/2: **{_fmt(summary['raw_engine_images_per_s'])} images/s** (median of rounds: "
              + ", ".join(_fmt(v) for v in summary["raw_engine_rounds"]) + ")." if raw else
              "Raw engine: not measured (the ONNX graph is only the backbone; the torch heads and the paste are the rest of the model).")
    lines = [
        f"### `{model['model']}` ({model['description']})",
        "",
        engine,
        "",
        "Label maps against segserve's on the same 4 images (640x480 x2, 500x375, 256x320): "
        + ", ".join(f"{name} {100 * a['equal_pixels']:.2f} % equal pixels" for name, a in model["agreement"].items()) + ".",
        "",
        *([f"The peers that batch form batches of up to {model['peer_batching']['size']} with a "
           f"{model['peer_batching']['window_ms']:g} ms window (BentoML: its adaptive one), as segserve's config.yaml for this model says.", ""]
          if "peer_batching" in model else []),
        f"Closed loop: `ab -n {model.get('requests', '?')} -c C -k -l` (at least 4 x C requests).",
        "",
        "| system | c | req/s | p50 ms | p95 ms | p99 ms | failed | server CPU ms/req | vs segserve | vs raw engine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in model["systems"]:
        for c in levels:
            row = summary["table"][name][c] if c in summary["table"][name] else summary["table"][name][str(c)]
            if "error" in row:
                lines.append(f"| {model['titles'][name]} | {c} | error: {row['error'][:80]} | | | | | | | |")
                continue
            lines.append(
                f"| {model['titles'][name]} | {c} | {row['requests_per_s']:.1f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} "
                f"| {row['failed']} | {row['server_cpu_ms_per_request']:.1f} | {_fmt(row['vs_segserve'], 2)} | {_fmt(row['vs_raw_engine'], 2)} |")
    opened = summary.get("open_loop") or {}
    if opened:
        lines += [
            "",
            f"Open loop (the project's generator, segserve_loadtest.generators.open_loop: request i sent at i / rate whatever came back, "
            f"HTTP/1.1 keep-alive, up to 64 connections, latency from the intended send time), {model.get('open_loop_seconds', '?')} s per "
            f"system per round at **{100 * model.get('open_loop_fraction', 0):.0f} % of segserve's best closed-loop req/s of that round** "
            "(the same rate for every system in a round):",
            "",
            "| system | offered req/s | achieved req/s | p50 ms | p95 ms | p99 ms | failed / sent | server CPU ms/req | client CPU ms/req | max send lag ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in model["systems"]:
            if name in opened:
                row = opened[name]
                lines.append(f"| {model['titles'][name]} | {row['rate_rps']:.1f} | {row['requests_per_s']:.1f} | {_fmt(row['p50_ms'], 0)} "
                             f"| {_fmt(row['p95_ms'], 0)} | {_fmt(row['p99_ms'], 0)} | {row['failed']} / {row['requests']} "
                             f"| {row['server_cpu_ms_per_request']:.1f} | {_fmt(row.get('client_cpu_ms_per_request'))} "
                             f"| {_fmt(row.get('max_send_lag_ms'), 0)} |")
    return lines


def markdown(result: dict) -> str:
    lines = [
        f"`{result['command']}` on {result['machine']} (load average {result['load_before']} before the timed part, "
        f"{result['load_after']} after; the first includes the systems' own start-up). "
        f"{result['rounds']} interleaved rounds (raw engine, then each system closed loop under ab at each level, then open loop at "
        "a fixed arrival rate), the 640x480 JPEG; medians over rounds. A `+ segserve codecs` row is that peer with segserve's own "
        "codec code doing the same work: against segserve it differs in the serving layer alone. "
        "Server CPU: utime + stime of the server's whole process tree (/proc) during the ab run, per completed request.",
        "",
        "Systems and their settings on this machine:",
        "",
        *[f"* **{result['titles'][name]}**: {settings}" for name, settings in result["settings"].items()],
        "",
    ]
    if result["skipped"]:
        lines += ["Not measured:", "", *[f"* **{name}**: {why}" for name, why in result["skipped"].items()], ""]
    for model in result["models"]:
        lines += model_markdown(model) + [""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    # a peer and its "+codecs" variant share a colour (the variant dashed); the open-loop point is an x
    bases = list(dict.fromkeys(name.removesuffix(CODECS) for model in models for name in model["systems"]))
    colours = {base: f"C{i % 10}" for i, base in enumerate(bases)}
    for axis, model in zip(axes[0], models):
        opened = model["summary"].get("open_loop") or {}
        for name in model["systems"]:
            rows = [model["summary"]["table"][name].get(c) or model["summary"]["table"][name].get(str(c)) for c in model["levels"]]
            points = [(r["requests_per_s"], r["p99_ms"], c) for r, c in zip(rows, model["levels"]) if r and "error" not in r]
            if not points:
                continue
            xs, ys, cs = zip(*points)
            colour = colours[name.removesuffix(CODECS)]
            axis.plot(xs, ys, marker="o", color=colour, linestyle="--" if name.endswith(CODECS) else "-", label=model["titles"][name])
            for x, y, c in points:
                axis.annotate(f"c={c}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if opened.get(name, {}).get("p99_ms"):
                axis.plot([opened[name]["requests_per_s"]], [opened[name]["p99_ms"]], marker="x", color=colour, markersize=8, linestyle="none")
        raw = model["summary"]["raw_engine_images_per_s"]
        top = max((line.get_xdata().max() for line in axis.get_lines()), default=0)
        if raw and raw <= 3 * top:
            axis.axvline(raw, color="grey", linestyle="--", label=f"raw engine {raw:.0f} img/s")
        axis.set_xlabel("throughput (req/s)")
        axis.set_ylabel("p99 latency (ms); x = open loop at a fixed rate")
        axis.set_yscale("log")
        beyond = f"; raw engine {raw:.0f} img/s, off the scale" if raw and raw > 3 * top else ""
        axis.set_title(f"{model['model']} (shared, loaded 2-core machine{beyond})", fontsize=9)
        axis.legend(fontsize=7)
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- main --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def bench_lock(path: str = LOCK_FILE):
    """The timed part under the same lock as `flock /tmp/segserve-bench.lock ...` (flock(2))."""
    with open(path, "a") as handle:
        print(f"waiting for {path} ...", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class ModelPlan:
    """How one model is measured: its closed-loop levels and ab requests, its open-loop seconds, whether its
    raw engine is measured (the semantic models: the ONNX graph is the whole model; Mask R-CNN's backbone is not)."""

    levels: list[int]
    requests: int
    open_loop_seconds: float
    raw_engine: bool = True
    codecs_only: bool = False  # served by the peers' "+codecs" variants alone (Mask R-CNN: segserve's split path)


def print_cell(label: str, cell: dict) -> None:
    print(f"  {label}: " + (cell["error"] if "error" in cell else
          f"{cell['requests_per_s']:.1f} req/s p99 {_fmt(cell['p99_ms'], 0)} ms, {cell['server_cpu_ms_per_request']:.1f} "
          f"CPU ms/req, failed {cell['failed'] + cell.get('non_2xx', 0)}"), flush=True)


def measure_system(target: Target, image: Payload, plan: "ModelPlan", entry: dict, open_loop_fraction: float) -> None:
    """One system's closed-loop levels, then its open loop, into the round's ``entry``."""
    entry["systems"][target.name] = {}
    for c in plan.levels:
        cell = measure_level(target, image, plan.requests, c)
        entry["systems"][target.name][str(c)] = cell
        print_cell(f"{target.name} c={c}", cell)
    # segserve comes first: its levels of this round set the rate every system then gets
    entry.setdefault("open_loop_rps", open_loop_rate(entry["systems"]["segserve"], open_loop_fraction))
    if plan.open_loop_seconds > 0 and entry["open_loop_rps"]:
        cell = measure_rate(target, image, entry["open_loop_rps"], plan.open_loop_seconds)
        entry["open_loop"][target.name] = cell
        print_cell(f"{target.name} open loop {cell['rate_rps']:.1f} req/s offered", cell)


def bench_model(name: str, repository: Path, description: str, work: Path, pythons: dict[str, Path], peer_specs: dict[str, Peer],
                args, skipped: dict[str, str], lock, plan: ModelPlan, codec_path: str = "") -> dict:
    from segserve_loadtest.bench_service import RawEngine

    image = photo()
    specs = {codecs: model_json(repository, name, work / f"{name}.{codecs}.json", codecs) for codecs in ("pil", "segserve")}
    chosen = {p: python for p, python in pythons.items() if peer_specs[p].codecs or not plan.codecs_only}
    titles = {"segserve": "segserve", **{p: peer_specs[p].title for p in chosen}}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(SegserveProcess(repository, work / f"segserve-{name}.log", models=[name]))
        targets = [Target("segserve", segment_url(server.url, name), "segment", server.process.pid, "")]
        for peer_name, python in chosen.items():
            peer = peer_specs[peer_name]
            process = PeerProcess(peer, python, specs["segserve" if peer.codecs else "pil"], work / f"{peer_name}-{name}.log",
                                  codec_path=codec_path)
            try:
                process.start()
            except (RuntimeError, OSError) as err:
                skipped[f"{peer_name} ({name})"] = f"did not start: {str(err)[-600:]}"
                print(f"{peer_name}: {err}", file=sys.stderr, flush=True)
                continue
            stack.callback(process.stop)
            targets.append(Target(peer_name, process.url, peer.protocol, process.pid, peer.settings))
        agree = check_agreement(targets, agreement_images())
        print(f"{name}: agreement " + ", ".join(f"{k} {100 * v['equal_pixels']:.2f} %" for k, v in agree.items()), flush=True)
        for target in targets:  # warm every path (and ORT's per-shape state) before timing
            payload, headers = target.load(image)
            with contextlib.suppress(AbError):
                run_ab(target.url, payload, requests=min(64, 4 * max(plan.levels)), concurrency=min(8, max(plan.levels)), headers=headers)
        raw = RawEngine(repository, name, np.asarray(synthetic_scene(640, 480, seed=0))) if plan.raw_engine else None
        rounds = []
        with lock():
            load_before = load_average()
            with Paused({t.name: t.pid for t in targets}) as paused:  # only the system being measured runs
                for i in range(args.rounds):
                    entry = {"raw_engine": raw_engine_round(raw, args.engine_seconds) if raw else None, "systems": {}, "open_loop": {}}
                    print(f"{name} round {i + 1}: raw engine "
                          + (f"{entry['raw_engine']['images_per_s']:.1f} images/s" if raw else "not measured"), flush=True)
                    for target in targets:
                        with paused.run(target.name):
                            measure_system(target, image, plan, entry, args.open_loop_fraction)
                    rounds.append(entry)
            load_after = load_average()
        if raw:
            raw.close()
    systems = [t.name for t in targets]
    return {"model": name, "description": description, "systems": systems, "titles": titles, "levels": plan.levels,
            "requests": plan.requests, "open_loop_seconds": plan.open_loop_seconds, "open_loop_fraction": args.open_loop_fraction,
            "agreement": agree, "rounds": rounds, "summary": summarise(rounds, systems, plan.levels),
            "load_before": load_before, "load_after": load_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.bench_peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(peers(1)), help="peers to run besides segserve (NAME+codecs: its variant "
                        "sharing segserve's codecs)")
    parser.add_argument("--models", default=f"{BUNDLED},{TRIVIAL},{INSTANCE}")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests", type=int, default=300, help="ab requests per level per system per round")
    parser.add_argument("--open-loop-seconds", type=float, default=15.0, help="the fixed-arrival-rate phase per system per round (0: none)")
    parser.add_argument("--open-loop-fraction", type=float, default=0.8, help="its rate: this much of segserve's best closed-loop "
                        "req/s in the same round")
    # Mask R-CNN takes ~0.2-0.5 s of CPU per request here: c = 32 would queue for seconds and need thousands of
    # requests to give stable percentiles, so it runs lower levels with fewer requests
    parser.add_argument("--instance-levels", default="1,4,8")
    parser.add_argument("--instance-requests", type=int, default=48, help="ab requests per level for Mask R-CNN")
    parser.add_argument("--instance-open-loop-seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engine-seconds", type=float, default=2.0, help="raw engine loop per batch size per round")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="where the bundled model is (exported if absent)")
    parser.add_argument("--cache", type=Path, default=Path(".cache/peers"), help="the peers' virtualenvs")
    parser.add_argument("--work", type=Path, default=Path("out/bench_peers"), help="logs and the peers' model files")
    parser.add_argument("--no-lock", action="store_true", help=f"do not wait for {LOCK_FILE} around the timed part")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--report-only", action="store_true", help="rewrite bench_peers.{md,png} from --out's bench_peers.json")
    args = parser.parse_args(argv)
    # SIGTERM (kill, a CI timeout) as an exit: the ExitStacks then stop every server and peer started so far
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.report_only:
        result = json.loads((args.out / "bench_peers.json").read_text())
        (args.out / "bench_peers.md").write_text(markdown(result) + "\n")
        plot(result, args.out / "bench_peers.png")
        return 0
    args.levels = [int(v) for v in args.levels.split(",")]
    cores = cpu_count()
    peer_specs = peers(cores)
    skipped: dict[str, str] = {}
    pythons: dict[str, Path] = {}
    names = [s for s in args.systems.split(",") if s]
    codec_path = ""
    if any(peer_specs[name].codecs for name in names):
        print(f"segserve's codecs for the +codecs variants: {args.cache / 'segserve-codecs'}", flush=True)
        try:
            codec_path = ensure_codec_path(args.cache, args.cache / "segserve-codecs.install.log")
        except (RuntimeError, OSError) as err:
            for name in [n for n in names if peer_specs[n].codecs]:
                skipped[name] = f"codec install failed: {err}"
            names = [n for n in names if not peer_specs[n].codecs]
            print(err, file=sys.stderr, flush=True)
    for name in names:
        peer = peer_specs[name]
        print(f"virtualenv for {name}: {args.cache / peer.venv}", flush=True)
        try:
            pythons[name] = ensure_venv(args.cache, peer, args.cache / f"{peer.venv}.install.log")
        except (RuntimeError, subprocess.CalledProcessError) as err:
            skipped[name] = f"install failed: {err}"
            print(f"{name}: {err}", file=sys.stderr, flush=True)

    import tempfile

    from segserve_loadtest.bench_overhead import build_trivial_model

    lock = contextlib.nullcontext if args.no_lock else bench_lock
    models = []
    with tempfile.TemporaryDirectory(prefix="segserve-peers-") as tmp:
        for name in args.models.split(","):
            plan = ModelPlan(args.levels, args.requests, args.open_loop_seconds)
            if name == TRIVIAL:
                repository = Path(tmp) / "repository"
                build_trivial_model(repository)
                description = "bench_overhead's trivial model: labels = images[:, 0] > 127, 256x256, almost no compute"
            else:
                repository = args.repository
                if name in EXPORTS:
                    ensure_bundled(repository, name)
                description = "the bundled LRASPP-MobileNetV3, 256x256, as `make models` exports it"
            if name == INSTANCE:
                plan = ModelPlan([int(v) for v in args.instance_levels.split(",")], args.instance_requests,
                                 args.instance_open_loop_seconds, raw_engine=False, codecs_only=True)
                description = ("the bundled Mask R-CNN-MobileNetV3-FPN as `make models` exports it, segserve's split path: backbone.onnx "
                               "on ONNX Runtime, the torch RPN/RoI heads from weights.pt, the box paste; the peers only as their "
                               "`+codecs` variants, which run that split with segserve's code")
            batching = Batching.of(repository, name)
            models.append(bench_model(name, repository, description, args.work, pythons, peers(cores, batching), args, skipped, lock, plan,
                                      codec_path) | {"peer_batching": {"size": batching.size, "window_ms": batching.window_s * 1000}})
    described = peers(cores, Batching.of(args.repository, BUNDLED) if BUNDLED in args.models.split(",") else Batching())
    result = {
        "command": "make bench-peers" if os.environ.get("MAKELEVEL") else "python -m segserve_loadtest.bench_peers " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {cores} CPUs",
        "load_before": models[0]["load_before"] if models else "?", "load_after": models[-1]["load_after"] if models else "?",
        "rounds": args.rounds, "requests": args.requests, "levels": args.levels, "open_loop_fraction": args.open_loop_fraction,
        "titles": {"segserve": "segserve", **{name: peer_specs[name].title for name in pythons}},
        "settings": {"segserve": "`segserve serve` on the model's exported config.yaml ("
                                 + "; ".join([*(f"{m}: {serving_settings(args.repository, m)}" for m in EXPORTS if m in args.models.split(",")),
                                              *(["trivial: bench_overhead's 6-line config"] if TRIVIAL in args.models.split(",") else [])])
                                 + ")",
                     # the batch settings as for the bundled model; each model's section gives its own
                     **{name: described[name].settings for name in pythons}},
        "skipped": skipped,
        "models": models,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_peers.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result)
    (args.out / "bench_peers.md").write_text(text + "\n")
    plot(result, args.out / "bench_peers.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
