"""Task pipelines: what a request for a semantic or instance model goes through.
A new task registers its class here; transports never change."""

from segserve.pipelines.base import ImageResult, OutputFormat, ServedModel, Timing
from segserve.pipelines.instance.model import InstanceModel
from segserve.pipelines.semantic import SemanticModel

PIPELINES = {"semantic": SemanticModel, "instance": InstanceModel}

__all__ = ["ImageResult", "InstanceModel", "OutputFormat", "PIPELINES", "SemanticModel", "ServedModel", "Timing"]
