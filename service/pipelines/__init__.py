"""Task pipelines: what a request for a model goes through, per task (see base.py for the
protocol). A new task registers its class here; transports never change."""

from segserve.contract.model_config import Task
from segserve.pipelines.base import (
    ImageResult,
    ModelState,
    OutputFormat,
    PartStatus,
    Pipeline,
    PipelineContext,
    Timing,
)
from segserve.pipelines.instance.keypoints import KeypointModel
from segserve.pipelines.instance.model import InstanceModel
from segserve.pipelines.semantic import SemanticModel

PIPELINES: dict[Task, type[Pipeline]] = {
    Task.semantic: SemanticModel,
    Task.instance: InstanceModel,
    Task.keypoints: KeypointModel,
}

__all__ = [
    "ImageResult", "ModelState", "OutputFormat", "PIPELINES", "PartStatus", "Pipeline", "PipelineContext", "Timing",
]
