"""Server settings: defaults < environment (SEGSERVE_*) < command-line flags."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, capped by the container's CPU quota (a
    pod limited to 2 CPUs on a 64-core host must size its thread pools for 2, not 64)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEGSERVE_", env_file=None, protected_namespaces=())

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    model_repository: Path = Path("model_repository")
    # Load only these models (comma-separated in the environment); empty = every model found.
    models: list[str] = Field(default_factory=list)
    default_model: str | None = None
    # Force one backend for every model ("onnxruntime", "torch"); unset = each config's preference.
    backend: Literal["onnxruntime", "torch"] | None = None
    # Where a semantic model's pixel work runs (JPEG decode, letterbox, argmax, restore, RLE run
    # boundaries; segserve.pipelines.semantic_device): "cpu" = PIL/numpy on the codec pool;
    # "device" = torch on the engine's device (CUDA with nvJPEG, else torch CPU tensors);
    # "auto" = device where the model is served by the torch backend on CUDA, else cpu.
    # /v1/models shows each model's as data_path.
    data_path: Literal["auto", "cpu", "device"] = "auto"

    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    # Pixels (as image headers declare them) of all the images being decoded, segmented and
    # encoded at once, across models: the server's memory bound (a decoded pixel costs ~20
    # bytes at peak: RGB, model input, full-size label map, masks). Beyond it: 503 + Retry-After.
    max_inflight_pixels: int = Field(120_000_000, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    # A connection whose request headers are not all there this long after it opened (or after
    # its request began) is closed and counted (segserve_slow_clients).
    header_timeout_s: float = Field(10.0, gt=0)
    # Open HTTP connections (and requests) at once; beyond it uvicorn answers 503 at once.
    max_connections: int = Field(2048, ge=1)
    # Threads for decode/resize/encode work off the event loop; 0 = one per CPU (cgroup quota included).
    codec_threads: int = Field(0, ge=0)
    # HTTP worker processes (segserve.supervisor): 1 = one process does everything (HTTP, gRPC,
    # engines); N > 1 = one engine process (engines, batchers, gRPC, metrics port) and N
    # processes serving HTTP on one port, which submit to its batchers; 0 = one per CPU of the
    # cgroup quota. Per worker: max_connections, codec_threads, max_inflight_pixels.
    workers: int = Field(1, ge=0)
    warmup: bool = True
    shutdown_drain_s: float = Field(30.0, ge=0)
    # After SIGTERM, /readyz answers 503 this long before the server stops taking connections
    # (time for a load balancer or Kubernetes to stop sending); requests are still served.
    shutdown_delay_s: float = Field(0.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- video: POST /segment/video (service/pipelines/video/runs.py) ----------------------
    # Frames one chunk may hold (after frame_stride); a request's max_frames can only lower it.
    video_max_frames: int = Field(64, ge=1, le=10_000)
    # Streams whose keyframe state (~0.7 MB each at 512x512) is kept between chunks; a new
    # stream evicts the least recently used idle one.
    video_max_streams: int = Field(64, ge=1)
    # A stream idle this long is dropped; its next chunk starts afresh with a keyframe.
    video_stream_idle_s: float = Field(60.0, gt=0)

    # --- gRPC: KServe v2 / Open Inference Protocol (service/transport/grpc/) -------------
    # Port of the gRPC server that runs beside HTTP in the same process (Triton's default
    # 8001, so tritonclient.grpc users need no change); 0 or unset disables it.
    grpc_port: int | None = Field(8001, ge=0, le=65535)

    # --- access control (service/transport/access.py; docs/deployment.md "Security") ------
    # The API key every request must carry, as `Authorization: Bearer <key>` or `X-API-Key:
    # <key>`, over HTTP and gRPC alike; unset = no key (everything open, as before). Probes stay
    # open: /healthz, /readyz and gRPC ServerLive/ServerReady. Either the key itself (env
    # SEGSERVE_API_KEY) or a file holding it (a mounted Kubernetes/Docker secret), not both.
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    # TLS for HTTP (uvicorn) and gRPC alike: a PEM certificate (chain) and its private key,
    # both or neither; unset = plain text. The metrics port never speaks TLS.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # A separate plain-HTTP port for /metrics (Prometheus scrapes it without key or TLS: bind
    # it where only the scraper reaches, see metrics_host); /metrics then leaves the main
    # port. Unset or 0 = /metrics on the main port, behind the key when one is set.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    # The metrics port's bind address; unset = `host`.
    metrics_host: str | None = None
    # Where /docs, /redoc and /openapi.json are served: "key" = on the main port, behind the
    # key when one is set; "public" = on the main port, open even with a key; "metrics_port" =
    # only on the metrics port (needs metrics_port); "off" = nowhere.
    docs: Literal["key", "public", "metrics_port", "off"] = "key"
    # FastAPI's own OpenTelemetry spans and metrics, for a process with an OpenTelemetry SDK
    # configured. Off by default: asking for the providers costs every request, and
    # segserve's Prometheus metrics (segserve.metrics) already count and time each one.
    opentelemetry: bool = False

    @model_validator(mode="after")
    def _access(self) -> "Settings":
        if self.api_key_file is not None:  # read once, here: api_key is then the one place to look
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"api_key_file: cannot read {self.api_key_file}: {exc.strerror}") from None
            if self.api_key is not None and self.api_key.get_secret_value() != key:  # (equal: these settings, re-validated)
                raise ValueError("set api_key or api_key_file, not both")
            self.api_key = SecretStr(key)
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            source = "api_key_file" if self.api_key_file is not None else "api_key"
            if not key:
                raise ValueError(f"{source} is empty; unset it to serve without a key")
            # What an HTTP header and gRPC metadata carry unchanged: visible ASCII, no spaces.
            if not all("!" <= c <= "~" for c in key):
                raise ValueError(f"{source} may hold only visible ASCII characters (no spaces)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.docs == "metrics_port" and not self.metrics_port:
            raise ValueError("docs='metrics_port' needs metrics_port")
        if self.metrics_port and self.metrics_port in (self.port, self.grpc_port):
            raise ValueError(f"metrics_port {self.metrics_port} is already the HTTP or gRPC port")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    def worker_count(self) -> int:
        return self.workers or available_cpus()

    def codec_thread_count(self) -> int:
        return self.codec_threads or max(2, available_cpus())
