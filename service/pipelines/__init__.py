"""Task pipelines: what a request for a semantic or instance model goes through.
A new task registers its class here; transports never change."""

from service.pipelines.base import ImageResult, OutputFormat, ServedModel, Timing
from service.pipelines.instance import InstanceModel
from service.pipelines.semantic import SemanticModel

PIPELINES = {"semantic": SemanticModel, "instance": InstanceModel}

__all__ = ["ImageResult", "InstanceModel", "OutputFormat", "PIPELINES", "SemanticModel", "ServedModel", "Timing"]
