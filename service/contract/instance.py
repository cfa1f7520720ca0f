"""The instance-model (Mask R-CNN) settings kept in config.yaml's ``parameters``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Every FPN stride divides the canvas the backbone runs on.
SIZE_DIVISIBLE = 32


def round_up(n: int, multiple: int = SIZE_DIVISIBLE) -> int:
    return -(-n // multiple) * multiple


class InstanceParameters(BaseModel):
    model_config = {"extra": "forbid"}

    min_size: int = Field(ge=1)  # torchvision's resize: short side target ...
    max_size: int = Field(ge=1)  # ... unless the long side would exceed this
    # Detector settings (torchvision RoI heads): boxes below box_score_thresh are dropped
    # before NMS; at most max_instances survive.
    box_score_thresh: float = Field(0.05, ge=0, le=1)
    max_instances: int = Field(100, ge=1)
    # Served defaults (a request may ask for others): instances below score_threshold are
    # not returned; mask pixels above mask_threshold are in the mask.
    score_threshold: float = Field(0.5, ge=0, le=1)
    mask_threshold: float = Field(0.5, ge=0, le=1)
    default_path: Literal["split", "whole_graph"] = "split"
    # dtype of the split path's canvas (backbone.onnx's input): float32 is torchvision's
    # exact input; uint8 moves 4x fewer bytes but rounds resized pixels (see preprocess)
    canvas_dtype: Literal["float32", "uint8"] = "float32"

    def default_canvas(self) -> tuple[int, int]:
        """A canvas that holds torchvision's resize of any aspect ratio, portrait or landscape."""
        side = round_up(self.max_size)
        return side, side
