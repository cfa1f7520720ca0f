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
    backend: Literal["onnxruntime", "torch", "tensorrt"] | None = None

    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    # Threads for decode/resize/encode work off the event loop; 0 = one per CPU.
    codec_threads: int = Field(0, ge=0)
    warmup: bool = True
    shutdown_drain_s: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def codec_thread_count(self) -> int:
        return self.codec_threads or max(2, len(os.sched_getaffinity(0)))
