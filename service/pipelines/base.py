"""What every served model looks like to the transports, whatever its task."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np

from segserve.engine import EngineInfo
from segserve.repository import ModelEntry


class OutputFormat(str, Enum):
    json = "json"
    png = "png"


@dataclass
class Timing:
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass
class ImageResult:
    """A finished request: either the JSON-able body fields or the PNG bytes."""

    width: int
    height: int
    timing: Timing
    body: dict[str, Any] = field(default_factory=dict)  # task-specific fields ("segments" / "instances")
    png: bytes | None = None
    label_map: np.ndarray | None = None  # semantic: (height, width) class ids the masks were made from


class ServedModel(Protocol):
    entry: ModelEntry
    engine_info: EngineInfo

    async def start(self, warmup: bool) -> None: ...

    async def stop(self, drain_timeout_s: float) -> None: ...

    def parse_options(self, query: dict[str, str]) -> Any:
        """Validate task-specific query parameters (raises BadParameter)."""
        ...

    async def segment_image(self, data: bytes, options: Any, fmt: OutputFormat, deadline: float) -> ImageResult: ...
