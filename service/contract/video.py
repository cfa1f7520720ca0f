"""The video split of a semantic model (``parameters.video`` in config.yaml), and the tensor
names of its parts: what ``segserve_models.video_split`` writes and the video pipeline runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from segserve.contract.artifacts import VIDEO_DIR
from segserve.contract.refine import REFINE_NONE, CrfSettings, Refine

# part -> (input tensor names, output tensor name), in the order a keyframe runs them
SPLIT_PARTS: dict[str, tuple[tuple[str, ...], str]] = {
    "shallow": (("images",), "low"),  # every frame
    "deep": (("low",), "deep"),  # keyframes
    "fuse": (("low", "deep"), "labels"),  # keyframes (and other frames without a correction)
    "correct": (("low", "deep", "key_low"), "labels"),  # other frames, when trained
}
# Each kind of split (``VideoSplit.split``, one per architecture family) runs the same parts;
# only the tensors a part takes differ: DeepLabV3's head has no low-level branch, so its
# fuse takes the deep features alone.
SPLIT_KINDS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "lraspp": SPLIT_PARTS,
    "deeplabv3": {**SPLIT_PARTS, "fuse": (("deep",), "labels")},
}

# Adaptive keyframe policies (threshold, longest interval), calibrated with
# segserve_models.video_bench on seeds apart from the reported ones (docs/benchmarks.md).
# Corrected non-keyframes tolerate larger changes than plain stale ones, but not the longest gaps.
DEFAULT_KEYFRAME_THRESHOLD, DEFAULT_MAX_KEYFRAME_INTERVAL = 1.0, 16
CORRECTED_KEYFRAME_THRESHOLD, CORRECTED_MAX_KEYFRAME_INTERVAL = 1.7, 8


class VideoCorrection(BaseModel):
    """The trained correction of stale keyframe features the ``correct`` part was exported with."""

    model_config = {"extra": "forbid"}

    file: str
    sha256: str


class VideoSplit(BaseModel):
    model_config = {"extra": "forbid"}

    split: Literal["lraspp", "deeplabv3"] = "lraspp"
    dir: str = Field(VIDEO_DIR, pattern=r"^[\w.-]+$")  # inside the version folder, one sub-folder per part
    keyframe_threshold: float | None = Field(DEFAULT_KEYFRAME_THRESHOLD, ge=0)
    max_keyframe_interval: int = Field(DEFAULT_MAX_KEYFRAME_INTERVAL, ge=1)
    correction: VideoCorrection | None = None

    def parts(self) -> list[str]:
        return [part for part in SPLIT_PARTS if part != "correct" or self.correction is not None]

    def tensors(self, part: str) -> tuple[tuple[str, ...], str]:
        """(input tensor names, output tensor name) of one of this split's parts."""
        return SPLIT_KINDS[self.split][part]


class SemanticParameters(BaseModel):
    """config.yaml ``parameters`` of a semantic model."""

    model_config = {"extra": "forbid"}

    video: VideoSplit | None = None
    # The served default of ``?refine=`` (a request may ask for the other); "crf" needs a model
    # with class scores (OutputSpec.has_scores), else the model fails to load with the reason.
    refine: Refine = REFINE_NONE
    crf: CrfSettings = CrfSettings()
