"""PyTorch eager engine: CUDA + fp16 when a GPU is there, CPU otherwise.

The artifact is a state_dict; the module is rebuilt from the architecture registry in
``segserve.graphs.zoo``, wrapped exactly as it was for ONNX export (uint8 in, normalisation and
optional argmax inside), so both backends take and give the same tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segserve.contract.model_config import ModelConfig
from segserve.engine.base import CPU_CALLS, EngineInfo, EngineUnavailable, Tensors

log = logging.getLogger(__name__)


class TorchEngine:
    def __init__(self, config: ModelConfig, weights_path: Path, instances: int = 1):
        import torch

        from segserve.graphs.serving import build_serving_module

        if not weights_path.is_file():
            raise EngineUnavailable(f"missing artifact {weights_path}")
        if config.architecture is None:
            raise EngineUnavailable("the torch backend needs `architecture` in config.yaml")
        want = config.torch.device
        if want == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("torch.device=cuda but no CUDA device is visible")
        self.device = torch.device("cuda" if want in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
        self._fp16 = config.torch.fp16 and self.device.type == "cuda"
        if self.device.type == "cpu" and config.torch.threads:
            torch.set_num_threads(config.torch.threads)

        module = build_serving_module(config)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        module.eval().to(self.device)
        if self._fp16:
            module.half_compute()
        self._module = module
        self._torch = torch
        self.info = EngineInfo(
            backend="torch",
            device=str(self.device),
            detail={"dtype": "float16" if self._fp16 else "float32", "torch": torch.__version__},
        )

    def infer(self, inputs: Tensors) -> Tensors:
        torch = self._torch
        with torch.inference_mode():
            args = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self._module.input_names}
            with CPU_CALLS.enter(self.device.type == "cpu"):
                return {name: t.cpu().numpy() for name, t in self.infer_tensors(args).items()}

    def infer_tensors(self, inputs: dict) -> dict:
        """``infer`` on tensors on ``self.device`` (segserve.engine.base.TensorEngine); float outputs as float32."""
        torch = self._torch
        with torch.inference_mode():
            out = self._module(*(inputs[n] for n in self._module.input_names))
            outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
            return {name: t.float() if t.is_floating_point() else t for name, t in zip(self._module.output_names, outs)}

    def close(self) -> None:
        self._module = None
