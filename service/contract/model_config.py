"""config.yaml of one model: the schema every exporter writes and the server reads.

Models are data: any ONNX segmentation model is served by writing a config.yaml next to a
``1/model.onnx``; only the torch backend needs an ``architecture`` known to
``segserve.graphs.zoo``.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

log = logging.getLogger(__name__)

from segserve.contract.artifacts import CONFIG_FILE, ONNX_ARTIFACT


# Class ids a uint8 label map holds: the in-graph argmax's output, and the argmax of logits outside the graph
# (larger class counts take int32 there).
UINT8_CLASSES = 256


class Task(str, Enum):
    semantic = "semantic"
    instance = "instance"
    keypoints = "keypoints"


class ResizeMode(str, Enum):
    letterbox = "letterbox"  # keep aspect ratio, pad bottom/right: masks map back exactly
    stretch = "stretch"  # resize to the input size, ignoring aspect ratio


class InputSpec(BaseModel):
    name: str = "images"
    height: int = Field(512, ge=16, le=8192)
    width: int = Field(512, ge=16, le=8192)
    resize: ResizeMode = ResizeMode.letterbox
    # Value written into the letterbox padding (RGB, 0..255). The graph normalises, so the
    # ImageNet mean pads to zero activations.
    pad_value: tuple[int, int, int] = (124, 116, 104)
    # segserve's own exports take uint8 and normalise in the graph. A dropped-in ONNX model
    # that wants float32 gets (pixel / 255 - mean) / std computed by the service.
    dtype: Literal["uint8", "float32"] = "uint8"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class OutputSpec(BaseModel):
    name: str = "labels"
    # "labels": uint8/int per-pixel class ids (argmax done in the graph, 1 byte/pixel moves);
    # "logits": float scores per class, argmax done by the service.
    kind: Literal["labels", "logits"] = "labels"
    # "labels" models exported with ``--probabilities`` also output the class probabilities under
    # this name (contract.refine.PROBABILITIES_OUTPUT: uint8, round(softmax * 255), (N, C, H, W)),
    # which dense-CRF refinement (``?refine=crf``) needs; None: labels only.
    probabilities: str | None = None

    @property
    def has_scores(self) -> bool:
        """Whether the engine gives per-class scores (probabilities or logits), not labels only."""
        return self.kind == "logits" or self.probabilities is not None


AUTO_BATCH = "auto"  # preferred_batch_size: measured at load


class DynamicBatching(BaseModel):
    # No window by default, as in Triton: a free instance takes whatever is queued, so batches form
    # under load and a lone request never waits for company that is not coming (the window was the
    # whole gap to a hand-written server at concurrency 1 on the trivial model: docs/benchmarks.md).
    max_queue_delay_ms: float = Field(0.0, ge=0, le=10_000)
    max_queue_size: int = Field(128, ge=1)
    # Batches close at this many requests (None: at max_batch_size). Apart from max_batch_size, which
    # is also what the engine accepts: the KServe per-request image limit, the video frame window, the
    # GPU batch. The batch a machine runs fastest is its own (on a 2-core CPU 1 to 4, not 8), so a
    # tuned config closes batches there without lowering what the model accepts (`segserve tune`);
    # "auto" measures it on the host at load (segserve.pipelines.batch_profile), what the exporter writes.
    preferred_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None


class OnnxRuntimeOptions(BaseModel):
    # The graph in the version folder that ONNX Runtime runs: a model with several graphs
    # (Mask R-CNN: backbone.onnx for the split path, model_full.onnx for the whole graph)
    # names the one it serves. A plain file name, never a path out of the version folder.
    model_file: str = Field(ONNX_ARTIFACT, pattern=r"^[\w.-]+\.onnx$")
    # "auto" = TensorRT EP, then CUDA EP, then CPU, whichever this onnxruntime build has.
    providers: list[str] | Literal["auto"] = "auto"
    # 0 = derive from the CPU count and the number of instances.
    intra_op_threads: int = Field(0, ge=0)
    # On the CPU, a call that starts while no other engine call of the process runs uses a session
    # with this many threads (0 = one per CPU) rather than its instance's share of the cores, which
    # would leave the rest idle at low load. No larger than intra_op_threads: no solo session.
    solo_threads: int = Field(0, ge=0)
    # Spinning threads burn the cores that decoding and encoding need on small machines.
    allow_spinning: bool = False
    trt_fp16: bool = True


class TorchOptions(BaseModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fp16: bool = True  # on CUDA only
    threads: int = Field(0, ge=0)


class KeypointSpec(BaseModel):
    """A keypoint model's K keypoints: their names, in the order every answer lists them, and
    the skeleton to draw them with (pairs of 1-based keypoint indices, COCO's convention)."""

    model_config = {"extra": "forbid"}

    names: list[str] = Field(min_length=1)
    skeleton: list[tuple[int, int]] = Field(default_factory=list)
    # Which keypoints (1-based) belong to instances of a class, for models whose classes have
    # keypoints of their own (the bundled shapes); answers give the others v = 0 (COCO: not
    # a keypoint of this object). A class not listed (e.g. COCO's one "person") has them all.
    classes: dict[str, list[int]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _indices_in_range(self) -> "KeypointSpec":
        bad = [pair for pair in self.skeleton if not all(1 <= i <= len(self.names) for i in pair)]
        if bad:
            raise ValueError(f"skeleton pairs must be 1-based indices into the {len(self.names)} names: {bad}")
        bad_classes = {c: ids for c, ids in self.classes.items() if not all(1 <= i <= len(self.names) for i in ids)}
        if bad_classes:
            raise ValueError(f"keypoints.classes must list 1-based indices into the {len(self.names)} names: {bad_classes}")
        return self


class WeightsInfo(BaseModel):
    source: Literal["pretrained", "file", "random", "bundled", "unknown"] = "unknown"
    detail: str = ""


class ModelConfig(BaseModel):
    """config.yaml of one model. Unknown keys are rejected so typos fail loudly."""

    model_config = {"extra": "forbid", "protected_namespaces": ()}

    name: str
    task: Task = Task.semantic
    architecture: str | None = None  # segserve.graphs.zoo name; required by the torch backend
    classes: list[str]
    input: InputSpec = InputSpec()
    output: OutputSpec = OutputSpec()
    max_batch_size: int = Field(8, ge=1, le=1024)
    dynamic_batching: DynamicBatching = DynamicBatching()
    instances: int = Field(1, ge=1, le=64)
    # Preferred backends, first available wins; SEGSERVE_BACKEND overrides for all models.
    backends: list[Literal["onnxruntime", "torch"]] = ["onnxruntime", "torch"]
    onnxruntime: OnnxRuntimeOptions = OnnxRuntimeOptions()
    torch: TorchOptions = TorchOptions()
    weights: WeightsInfo = WeightsInfo()
    keypoints: KeypointSpec | None = None  # keypoint models only (task: keypoints)
    # Task-specific extras (e.g. instance-model thresholds, video split) live here,
    # validated by the pipeline that owns the task.
    parameters: dict = Field(default_factory=dict)

    @field_validator("classes")
    @classmethod
    def _classes_not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("classes must list at least one class")
        return v

    @property
    def batch_size(self) -> int:
        """The largest batch the batcher may form (with "auto", the size measured at load is at most this)."""
        preferred = self.dynamic_batching.preferred_batch_size
        return self.max_batch_size if preferred in (None, AUTO_BATCH) else preferred

    @property
    def measures_batch_size(self) -> bool:
        """preferred_batch_size: auto -- the batch size is measured on the host at load."""
        return self.dynamic_batching.preferred_batch_size == AUTO_BATCH

    @property
    def in_flight_budget(self) -> int:
        """Requests the model holds at once: its queue, and a batch running on each instance;
        beyond it the server refuses at once (pipelines.base, limits.InFlight)."""
        return self.dynamic_batching.max_queue_size + self.instances * self.batch_size

    @model_validator(mode="after")
    def _preferred_batch_within_max(self) -> "ModelConfig":
        if self.batch_size > self.max_batch_size:
            raise ValueError(f"dynamic_batching.preferred_batch_size ({self.batch_size}) must not exceed max_batch_size ({self.max_batch_size})")
        return self

    @model_validator(mode="after")
    def _semantic_class_limit(self) -> "ModelConfig":
        if self.task == Task.semantic and len(self.classes) > UINT8_CLASSES and self.output.kind == "labels":
            raise ValueError(f"in-graph argmax emits uint8 labels: at most {UINT8_CLASSES} classes")
        return self

    @model_validator(mode="after")
    def _keypoints_for_keypoint_models(self) -> "ModelConfig":
        if (self.task == Task.keypoints) != (self.keypoints is not None):
            raise ValueError("keypoints (names, skeleton) are required for task: keypoints and only there")
        return self

    def dump(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def load_config(model_dir: Path) -> ModelConfig:
    raw = yaml.safe_load((model_dir / CONFIG_FILE).read_text()) or {}
    raw.setdefault("name", model_dir.name)
    return ModelConfig.model_validate(raw)


def latest_version(model_dir: Path) -> int | None:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions) if versions else None
