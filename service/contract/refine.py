"""Dense-CRF refinement of semantic masks (DeepLab's post-processing step): the request option,
the config.yaml settings and the probability output a model needs for it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# ``?refine=`` (HTTP query, gRPC / KServe parameter) and ``parameters.refine`` in config.yaml.
REFINE_NONE, REFINE_CRF = "none", "crf"
REFINE_CHOICES = (REFINE_NONE, REFINE_CRF)
Refine = Literal["none", "crf"]

# The name of the extra output ``segserve export --probabilities`` adds next to ``labels``:
# the softmax, uint8-quantised (round(p * 255)), (N, C, H, W) at model resolution.
PROBABILITIES_OUTPUT = "probs"
PROBABILITY_SCALE = 255.0


class CrfSettings(BaseModel):
    """pydensecrf's fully connected CRF (Krähenbühl & Koltun 2011) at model resolution: a smoothness
    kernel (gaussian: position only) and an appearance kernel (bilateral: position and colour),
    mean-field ``iterations``. Distances are model-input pixels and RGB levels. The defaults were
    picked on held-out validation scenes apart from the reported ones (docs/accuracy.md)."""

    model_config = {"extra": "forbid"}

    iterations: int = Field(5, ge=1, le=50)
    gaussian_sxy: float = Field(3.0, gt=0)
    gaussian_compat: float = Field(3.0, ge=0)
    bilateral_sxy: float = Field(20.0, gt=0)
    bilateral_srgb: float = Field(13.0, gt=0)
    bilateral_compat: float = Field(10.0, ge=0)
