"""Server settings: defaults < environment (SEGSERVE_*) < command-line flags."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field
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

    def codec_thread_count(self) -> int:
        return self.codec_threads or max(2, available_cpus())
