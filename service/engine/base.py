"""The one interface every inference backend implements.

An engine is a loaded, ready-to-run model instance: named numpy tensors in, named
numpy tensors out, batch dimension first. It knows nothing about HTTP, requests,
images or batching policy; the scheduler calls ``infer`` from one dedicated thread
per engine instance, so implementations need not be thread-safe.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class EngineInfo:
    backend: str  # "onnxruntime" or "torch"
    device: str  # human-readable: "cpu", "cuda:0", "CUDAExecutionProvider"...
    detail: dict[str, str]  # backend specifics worth showing in /v1/models


@runtime_checkable
class Engine(Protocol):
    info: EngineInfo

    def infer(self, inputs: Tensors) -> Tensors:
        """Run one batch. Every input and output has the batch on axis 0."""
        ...

    def close(self) -> None:
        """Release the session/device memory. Idempotent."""
        ...


@runtime_checkable
class TensorEngine(Engine, Protocol):
    """An engine that also takes and gives torch tensors on its own device, without copies
    (the torch backend): what the semantic pipeline's device data path feeds directly."""

    device: "torch.device"

    def infer_tensors(self, inputs: "dict[str, torch.Tensor]") -> "dict[str, torch.Tensor]":
        """``infer`` on tensors already on ``device``; the outputs stay there. Runs on the
        caller's current CUDA stream."""
        ...


class RunningCalls:
    """How many model calls run on the CPU now, in this process (engines, and the torch heads of
    a split model): the cores they share are the process'. A call that starts alone may use them
    all (segserve.engine.onnxruntime's solo session)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @contextmanager
    def enter(self, on_cpu: bool = True) -> Iterator[bool]:
        """Counts the call while it runs; yields whether it started alone. A call on another
        device takes no core: it is not counted, and never alone."""
        if not on_cpu:
            yield False
            return
        with self._lock:
            self._running += 1
            alone = self._running == 1
        try:
            yield alone
        finally:
            with self._lock:
                self._running -= 1


CPU_CALLS = RunningCalls()


class EngineUnavailable(RuntimeError):
    """The backend cannot run here (library missing, no GPU, artifact missing)."""
