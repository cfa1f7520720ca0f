"""Pick and build an engine for a model version: the only place that knows every backend
(a native TensorRT engine would plug in here; today TensorRT runs as ONNX Runtime's execution provider).
The ONNX graph is the config's ``onnxruntime.model_file`` (model.onnx unless it says otherwise)."""

from __future__ import annotations

import logging
from pathlib import Path

from segserve.contract.artifacts import WEIGHTS_ARTIFACT
from segserve.contract.model_config import ModelConfig
from segserve.engine.base import Engine, EngineUnavailable

log = logging.getLogger(__name__)


def _build(backend: str, config: ModelConfig, version_dir: Path) -> Engine:
    if backend == "onnxruntime":
        from segserve.engine.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(version_dir / config.onnxruntime.model_file, config.onnxruntime, instances=config.instances)
    if backend == "torch":
        from segserve.engine.torch import TorchEngine

        return TorchEngine(config, version_dir / WEIGHTS_ARTIFACT, instances=config.instances)
    raise EngineUnavailable(f"unknown backend {backend!r}")


def create_engine(config: ModelConfig, version_dir: Path, backend: str | None = None) -> Engine:
    """Build one engine instance: the forced ``backend``, else the first of config.backends
    that works here. Raises EngineUnavailable with every backend's reason."""
    candidates = [backend] if backend else list(config.backends)
    reasons = []
    for name in candidates:
        try:
            return _build(name, config, version_dir)
        except EngineUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            log.info("model %s: backend %s unavailable: %s", config.name, name, exc)
    raise EngineUnavailable("; ".join(reasons) or "no backend configured")


def create_engines(config: ModelConfig, version_dir: Path, backend: str | None = None) -> list[Engine]:
    """``config.instances`` engines: the first as ``create_engine`` picks it, the rest on the same
    backend (ONNX Runtime's instances share one solo session: segserve.engine.onnxruntime)."""
    first = create_engine(config, version_dir, backend)
    engines = [first]
    for _ in range(config.instances - 1):
        engines.append(first.sibling() if first.info.backend == "onnxruntime" else _build(first.info.backend, config, version_dir))
    return engines
