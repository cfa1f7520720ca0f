"""Typed request/response shapes: what /docs shows and what tests validate responses against."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from segserve.pipelines import ModelState


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width] of the original image")
    counts: str = Field(description="COCO compressed RLE (column-major), as pycocotools.mask.encode gives it")


class Segment(BaseModel):
    class_id: int
    label: str
    area: int = Field(description="pixels of this class")
    mask: RLE


class Instance(BaseModel):
    class_id: int
    label: str
    score: float
    box: list[float] = Field(description="[x1, y1, x2, y2] in original-image pixels")
    mask: RLE


class KeypointInstance(BaseModel):
    class_id: int
    label: str
    score: float
    box: list[float] = Field(description="[x1, y1, x2, y2] in original-image pixels")
    keypoints: list[float] = Field(
        description="COCO's flat [x1, y1, v1, x2, y2, v2, ...]: the model's K keypoints (names and skeleton in "
        "/v1/models) in original-image pixels; v as torchvision gives it (1), or 0 for a keypoint that is not one of "
        "this instance's class (keypoints.classes)"
    )
    keypoint_scores: list[float] = Field(description="K heatmap logits, one per keypoint: higher is surer")


class TimingMs(BaseModel):
    queue: float = Field(description="waiting in the batching queue")
    compute: float = Field(description="the engine run of the batch this request was in")
    total: float = Field(description="body received to response ready")


class SemanticResponse(BaseModel):
    model: str
    task: Literal["semantic"]
    width: int
    height: int
    classes: list[str]
    segments: list[Segment]
    timing_ms: TimingMs


class InstanceResponse(BaseModel):
    model: str
    task: Literal["instance"]
    width: int
    height: int
    instances: list[Instance]
    timing_ms: TimingMs


class KeypointsResponse(BaseModel):
    model: str
    task: Literal["keypoints"]
    width: int
    height: int
    keypoint_names: list[str] = Field(description="the K keypoints, in the order each instance's keypoints list them")
    skeleton: list[tuple[int, int]] = Field(description="pairs of 1-based keypoint indices joined by lines (COCO's convention)")
    instances: list[KeypointInstance]
    timing_ms: TimingMs


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class InputGeometry(BaseModel):
    height: int
    width: int
    resize: str


class WeightsSource(BaseModel):
    source: str = Field(description="pretrained | file | bundled | random")
    detail: str


class KeypointsInfo(BaseModel):
    names: list[str] = Field(description="the K keypoints, in the order every answer lists them")
    skeleton: list[tuple[int, int]] = Field(description="pairs of 1-based keypoint indices to draw lines between (COCO's convention)")
    classes: dict[str, list[int]] = Field(
        default_factory=dict, description="the keypoints (1-based) of each class that has its own; answers give the others v = 0")


class PartInfo(BaseModel):
    """A part of a model that loads on its own, e.g. a graph of its video split."""

    name: str = Field(description="e.g. video/shallow, video/deep, video/fuse, video/correct")
    state: ModelState
    reason: str | None = None
    backend: str | None = None
    device: str | None = None


class ModelInfo(BaseModel):
    name: str
    task: str
    architecture: str | None = Field(None, description="segserve architecture (config.yaml); none for a dropped-in ONNX model")
    state: ModelState
    reason: str | None = None
    backend: str | None = None
    device: str | None = None
    data_path: str | None = Field(None, description="where the image's decode, letterbox, restore and RLE run: "
                                  "cpu, or device:<torch device> (SEGSERVE_DATA_PATH)")
    version: int | None = None
    input: InputGeometry
    max_batch_size: int = Field(description="the largest batch the engine accepts, and the most images one KServe request may carry")
    batch_size: int = Field(description="the largest batch the batcher forms (dynamic_batching.preferred_batch_size: the "
                            "size given, or with auto the one measured at load; else max_batch_size)")
    max_queue_delay_ms: float
    instances: int
    classes: list[str]
    keypoints: KeypointsInfo | None = Field(None, description="keypoint models: their keypoints' names and skeleton")
    weights: WeightsSource
    parts: list[PartInfo] = Field(default_factory=list, description="parts loaded on their own (video split graphs)")


class ModelList(BaseModel):
    default_model: str | None
    models: list[ModelInfo]


class KeyframePolicyInfo(BaseModel):
    interval: int = Field(description="a keyframe at least every this many frames")
    threshold: float | None = Field(description="adaptive keyframes: relative shallow-feature change, if set")
    split: bool = Field(description="the model computes deep features on keyframes only (video split)")


class VideoTimingMs(BaseModel):
    decode: float = Field(description="arrival to decoded chunk (body read included)")
    segment: float = Field(description="the chunk's frames through the model")
    total: float


class VideoFrame(BaseModel):
    """One segmented frame: ``segments`` (semantic), ``instances`` (instance, keypoints) or, with format=png,
    ``png``, with format=overlay, ``overlay``."""

    index: int = Field(description="position among the chunk's decoded frames")
    pts: float | None = Field(description="presentation time, seconds")
    keyframe: bool
    segments: list[Segment] | None = None
    instances: list[Instance | KeypointInstance] | None = None
    png: str | None = Field(None, description="format=png: the label (or instance-id) map, base64 PNG")
    overlay: str | None = Field(None, description="format=overlay: the frame with its masks drawn in, base64 JPEG")


class VideoResponse(BaseModel):
    """POST /segment/video as JSON; with Accept: application/x-ndjson the same, one frame per line, then the rest."""

    model: str
    task: Literal["semantic", "instance", "keypoints"]
    width: int
    height: int
    classes: list[str]
    keypoint_names: list[str] | None = Field(None, description="keypoint models: as for /segment")
    skeleton: list[tuple[int, int]] | None = Field(None, description="keypoint models: as for /segment")
    stream_id: str | None
    sequence: int | None
    new_stream: bool
    keyframe_policy: KeyframePolicyInfo
    frames: list[VideoFrame]
    keyframes: int
    timing_ms: VideoTimingMs
