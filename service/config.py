"""Server settings: defaults < environment (SEGSERVE_*) < command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    request_timeout_s: float = Field(30.0, gt=0)
    # Threads for decode/resize/encode work off the event loop; 0 = one per CPU.
    codec_threads: int = Field(0, ge=0)
    warmup: bool = True
    shutdown_drain_s: float = Field(30.0, ge=0)
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
        return self.codec_threads or max(2, len(os.sched_getaffinity(0)))
