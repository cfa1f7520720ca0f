"""Semantic segmentation: decode + letterbox -> batched engine -> [dense CRF] -> restore -> RLE per class or PNG."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping

import numpy as np

from segserve.codecs.geometry import Letterbox
from segserve.codecs.masks import encode_label_png, restored_segments, segments_from_runs
from segserve.codecs.overlay import blend_labels
from segserve.contract.model_config import UINT8_CLASSES, ModelConfig, Task
from segserve.contract.refine import REFINE_CHOICES, REFINE_CRF
from segserve.contract.video import SemanticParameters
from segserve.engine import Engine
from segserve.errors import BadParameter, UndecodableInput
from segserve.pipelines.base import Encoded, OutputFormat, Pipeline, Placement, stacked
from segserve.pipelines.options import ChoiceOption
from segserve.pipelines.refine import refine_letterboxed
from segserve.pipelines.semantic_device import DeviceLabels, DeviceRunner, Undecodable, choose_device, decode_input
from segserve.pipelines.video.semantic import SemanticVideoModel

log = logging.getLogger(__name__)

REFINE = ChoiceOption("refine", "crf = dense-CRF refinement of the masks (a model exported with class probabilities; "
                      "else 400); none = the engine's masks. Default: the model's parameters.refine (none)", REFINE_CHOICES)


@dataclass(frozen=True)
class SemanticOptions:
    refine: bool  # ?refine=crf (else the model's parameters.refine)


@dataclass(frozen=True)
class Scored:
    """One image's output from a model with class scores (OutputSpec.has_scores): what
    ``?refine=crf`` needs besides the labels. All three are views into the batch's arrays."""

    labels: np.ndarray  # (H, W) class ids, the engine's
    scores: np.ndarray  # (C, H, W): uint8 quantised softmax, or float logits
    image: np.ndarray  # (3, H, W) uint8: the letterboxed model input (the CRF's appearance kernel)


class SemanticModel(Pipeline):
    task = Task.semantic
    options = (REFINE,)
    label_map = True
    json_floats = False  # class ids, labels, areas and RLE strings
    device = None  # torch.device of the device data path (semantic_device); None = the CPU path

    async def start(self) -> None:
        self.params = SemanticParameters.model_validate(self.config.parameters)
        if self.params.refine == REFINE_CRF and not self.config.output.has_scores:
            raise ValueError(f"parameters.refine is crf but {self._cannot_refine()}")
        self._default_options = SemanticOptions(refine=self.params.refine == REFINE_CRF)
        await super().start()
        self.video = SemanticVideoModel(self, self.params.video)
        await self.video.start()

    def engines_loaded(self) -> None:
        self.device, why = choose_device(self.context.data_path, self.config, self.engines[0])
        log.info("model %s: data path %s (%s)", self.config.name, self.data_path, why)

    @property
    def data_path(self) -> str:
        return "cpu" if self.device is None else f"device:{self.device}"

    def response_fields(self) -> dict[str, Any]:
        return {"classes": self.config.classes}

    def read_options(self, query: Mapping[str, str]) -> SemanticOptions:
        text = REFINE.parse(query)
        if text is None:
            return self._default_options
        if text == REFINE_CRF and not self.config.output.has_scores:
            raise BadParameter(f"refine=crf: {self._cannot_refine()}")
        return SemanticOptions(refine=text == REFINE_CRF)

    def _cannot_refine(self) -> str:
        return (
            f"model {self.config.name!r} cannot be refined: its engine gives labels only (argmax in the graph) and a "
            "dense CRF needs class probabilities; export it with `segserve export --probabilities` (or serve logits)"
        )

    # -- hooks ------------------------------------------------------------------------
    def geometry(self, height: int, width: int) -> Letterbox:
        return Letterbox.fit(height, width, self.config.input)

    def decode_size(self, geometry: Letterbox) -> tuple[int, int]:
        return geometry.min_decode_size()

    def to_input(self, geometry: Letterbox, rgb: np.ndarray) -> np.ndarray:
        return geometry.apply(rgb, self.config.input.pad_value)  # (3, H, W) uint8 at the model input size

    def decode_input(self, data: bytes, reserve: Callable[[int], None]) -> tuple[Any, Placement]:
        if self.device is None:
            return super().decode_input(data, reserve)
        model_input = decode_input(data, self.context.max_image_pixels, reserve, self.geometry, self.to_input)
        box = model_input.box
        return model_input, Placement(box.src_h, box.src_w, box)

    def blank_input(self) -> np.ndarray:
        spec = self.config.input
        return np.zeros((3, spec.height, spec.width), np.uint8)

    def predict(self, engine: Engine) -> Callable[[list[np.ndarray]], list[np.ndarray] | list[Scored]]:
        config = self.config
        if self.device is not None:
            return DeviceRunner(engine, config, self.device)
        if not config.output.has_scores:  # labels only: the fast path, 1 byte per pixel out of the engine
            def run(batch: list[np.ndarray]) -> list[np.ndarray]:
                return list(infer_labels(engine, config, stacked(batch)))

            return run

        def run_scored(batch: list[np.ndarray]) -> list[Scored]:
            images = stacked(batch)
            labels, scores = infer_outputs(engine, config, images)
            return [Scored(*item) for item in zip(labels, scores, images)]

        return run_scored

    def encode(self, output: np.ndarray | Scored | DeviceLabels | Undecodable, placement: Placement,
               options: SemanticOptions | None, fmt: OutputFormat) -> Encoded:
        box: Letterbox = placement.geometry
        if isinstance(output, Undecodable):
            raise UndecodableInput(output.reason)
        if isinstance(output, DeviceLabels):
            if fmt == OutputFormat.png:
                return self.encode(output.host_labels(), placement, options, fmt)
            # the runs were found on the device: only their RLE strings are written here
            segments = segments_from_runs(output.run_start, output.run_value, box.src_h, box.src_w, self.config.classes)
            return Encoded({"segments": segments}, make_label_map=lambda: box.restore(output.host_labels()))
        labels = self.refined(output, box, options)
        if fmt == OutputFormat.png:
            full = box.restore(labels)
            return Encoded(png=encode_label_png(full), make_label_map=lambda: full)
        # The RLEs and areas straight from the model-resolution map's runs: no full-size pass.
        segments = restored_segments(labels, box.restore_index(), self.config.classes)
        return Encoded({"segments": segments}, make_label_map=partial(box.restore, labels))

    def refined(self, output: np.ndarray | Scored, box: Letterbox, options: SemanticOptions | None) -> np.ndarray:
        """The model-resolution label map to encode: the engine's, or dense-CRF refined (on the codec
        pool, in ``encode``'s thread; segserve.pipelines.refine says why at model resolution)."""
        if not isinstance(output, Scored):
            if options is not None and options.refine:  # a video split part's frame: labels only
                raise BadParameter(f"refine=crf: model {self.config.name!r} gives labels only on this path "
                                   "(its video split parts); refine single images on /segment")
            return output
        if options is None or not options.refine:
            return output.labels
        return refine_letterboxed(output.labels, output.scores, output.image, box.content_h, box.content_w, self.params.crf)

    def draw(self, rgb: np.ndarray, encoded: Encoded, options: None) -> np.ndarray:
        return blend_labels(rgb, encoded.label_map)



def _to_engine_input(config: ModelConfig, images: np.ndarray) -> np.ndarray:
    spec = config.input
    if spec.dtype == "float32":
        std = np.asarray(spec.std, np.float32)[:, None, None]
        images = images.astype(np.float32) * (1.0 / (255.0 * std)) - np.asarray(spec.mean, np.float32)[:, None, None] / std
    return images


def _argmax(logits: np.ndarray) -> np.ndarray:
    return logits.argmax(axis=1).astype(np.uint8 if logits.shape[1] <= UINT8_CLASSES else np.int32)


def infer_labels(engine: Engine, config: ModelConfig, images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 letterboxed images -> (N, H, W) class ids at model resolution,
    whatever the graph wants in (uint8, or float32 normalised here) and gives out (labels or logits)."""
    out = engine.infer({config.input.name: _to_engine_input(config, images)})[config.output.name]
    if config.output.kind == "logits":
        out = _argmax(out)
    return out


def infer_outputs(engine: Engine, config: ModelConfig, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A model with class scores (OutputSpec.has_scores): (N, H, W) class ids and (N, C, H, W)
    scores: the uint8 probabilities output next to labels, or the logits."""
    outputs = engine.infer({config.input.name: _to_engine_input(config, images)})
    spec = config.output
    if spec.kind == "logits":
        logits = outputs[spec.name]
        return _argmax(logits), logits
    return outputs[spec.name], outputs[spec.probabilities]
