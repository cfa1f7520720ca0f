"""ONNX Runtime engine: TensorRT EP, then CUDA EP, then CPU, unless the config names providers.

On the CPU, a model's instances run one intra-op thread each by default (``default_threads``):
under load every core runs a batch. A call that starts while no other engine call of the
process runs would leave the other cores idle, so it runs on the model's *solo* session
instead, with a thread per CPU (``onnxruntime.solo_threads``), shared by the instances: only
a call that started alone uses it, so it runs one call at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segserve.config import available_cpus
from segserve.contract.model_config import OnnxRuntimeOptions
from segserve.engine.base import CPU_CALLS, EngineInfo, EngineUnavailable, Tensors

log = logging.getLogger(__name__)

AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: list[str] | str, available: list[str]) -> list[str]:
    if requested == "auto":
        return [p for p in AUTO_ORDER if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        raise EngineUnavailable(f"onnxruntime providers {missing} not in this build (has {available})")
    return list(requested)


def default_threads(instances: int) -> int:
    return max(1, available_cpus() // max(1, instances))


class OnnxRuntimeEngine:
    def __init__(self, model_path: Path, options: OnnxRuntimeOptions, instances: int = 1,
                 solo_of: "OnnxRuntimeEngine | None" = None):
        """``solo_of``: an instance of the same model whose solo session this one shares."""
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
            raise EngineUnavailable(f"onnxruntime not importable: {exc}") from exc
        if not model_path.is_file():
            raise EngineUnavailable(f"missing artifact {model_path}")

        providers = choose_providers(options.providers, ort.get_available_providers())
        provider_options: list[dict[str, str]] = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                trt_cache = str(model_path.parent / "trt_cache")
                provider_options.append(
                    {
                        "trt_fp16_enable": str(options.trt_fp16),
                        "trt_engine_cache_enable": "True",
                        "trt_engine_cache_path": trt_cache,
                    }
                )
            else:
                provider_options.append({})

        def session(threads: int):
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.inter_op_num_threads = 1
            so.intra_op_num_threads = threads
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
            return ort.InferenceSession(str(model_path), sess_options=so, providers=providers, provider_options=provider_options)

        self._model_path, self._options, self._instances = model_path, options, instances
        threads = options.intra_op_threads or default_threads(instances)
        self._session = session(threads)
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_names = [o.name for o in self._session.get_outputs()]
        active = self._session.get_providers()[0]
        self._on_cpu = active == "CPUExecutionProvider"
        solo_threads = options.solo_threads or available_cpus()
        if solo_of is not None:
            self._solo = solo_of._solo
        else:
            self._solo = session(solo_threads) if self._on_cpu and solo_threads > threads else None
        detail = {"providers": ",".join(self._session.get_providers()), "intra_op_threads": str(threads)}
        if self._solo is not None:
            detail["solo_threads"] = str(solo_threads)
        self.info = EngineInfo(backend="onnxruntime", device=active, detail=detail)
        log.info("onnxruntime session %s on %s (%d threads%s)", model_path, active, threads,
                 f", {solo_threads} when alone" if self._solo is not None else "")

    def sibling(self) -> "OnnxRuntimeEngine":
        """Another instance of the same model: a session of its own, the same solo session."""
        return OnnxRuntimeEngine(self._model_path, self._options, self._instances, solo_of=self)

    def infer(self, inputs: Tensors) -> Tensors:
        feed = {name: np.ascontiguousarray(inputs[name]) for name in self._input_names}
        with CPU_CALLS.enter(self._on_cpu) as alone:
            session = self._solo if alone and self._solo is not None else self._session
            outputs = session.run(self._output_names, feed)
        return dict(zip(self._output_names, outputs))

    def close(self) -> None:
        self._session = self._solo = None
