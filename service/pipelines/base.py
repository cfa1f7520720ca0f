"""The task protocol: what every served model implements, whatever its task.

A request runs the same steps in every pipeline, with LitServe's names:

    decode   bytes -> the model's input and where its outputs go back to (codec pool)
    batch    the input waits in the model's dynamic batcher (segserve.scheduler)
    predict  a batch through the engine instance -> one raw output per input (engine thread)
    encode   a raw output -> the response's fields or a PNG, at the image's size (codec pool)
    draw     (format=overlay) the encoded masks blended into the image as received -> a JPEG

A task subclasses ``Pipeline``, provides those hooks plus the geometry that ``decode`` and the
video chunk decoder share, says which request ``options`` it takes, and registers its class in
``segserve.pipelines.PIPELINES``; no transport changes. Its ``video`` attribute is how
``/segment/video`` runs it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, Callable, ClassVar, Hashable, Mapping

import numpy as np

from segserve.codecs.image import decode_image
from segserve.codecs.jsonbytes import dumps
from segserve.codecs.overlay import encode_jpeg
from segserve.contract.model_config import ModelConfig, Task
from segserve.engine import Engine, EngineInfo, create_engines
from segserve.errors import BadParameter
from segserve.metrics import Metrics
from segserve.pipelines.batch_profile import BatchRun, measured_batch_size
from segserve.pipelines.limits import Admission, InFlight, PixelBudget, check_deadline
from segserve.pipelines.options import MODEL, TIMEOUT_MS, ChoiceOption, Option
from segserve.repository import ModelEntry
from segserve.scheduler import Batcher, BatcherFactory, BatchPolicy

class ModelState(str, Enum):
    loading = "LOADING"
    ready = "READY"
    unavailable = "UNAVAILABLE"


class OutputFormat(str, Enum):
    json = "json"
    png = "png"
    overlay = "overlay"  # a JPEG of the input with its masks drawn in (segserve.codecs.overlay)


FORMAT = ChoiceOption("format", "json (default), png (label map) or overlay (JPEG)", tuple(f.value for f in OutputFormat))
# Request options every task takes; a task's own come from its ``options``.
COMMON_OPTIONS: tuple[Option, ...] = (MODEL, FORMAT, TIMEOUT_MS)


@dataclass(frozen=True)
class Placement:
    """Where a model output goes back to: the image as received and the task's mapping from
    it to the model input (semantic: the Letterbox; instance: the size itself)."""

    height: int
    width: int
    geometry: Hashable


@dataclass(frozen=True)
class Decoded:
    model_input: Any  # what the batcher and ``predict`` take
    placement: Placement
    reserved_pixels: int = 0  # of the server's PixelBudget, held until the answer is encoded


@dataclass(frozen=True)
class Encoded:
    body: dict[str, Any] = field(default_factory=dict)  # task-specific fields ("segments" / "instances")
    png: bytes | None = None
    jpeg: bytes | None = None  # format=overlay
    # semantic: computes the (height, width) class-id map the masks describe. Only gRPC's LABELS
    # output needs that full-size map, so it is made on demand (the masks come from the runs).
    make_label_map: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def label_map(self) -> np.ndarray | None:
        return None if self.make_label_map is None else self.make_label_map()


@dataclass
class Timing:
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass
class ImageResult:
    """A finished request: the JSON-able body fields, or the PNG (or overlay JPEG) bytes."""

    width: int
    height: int
    timing: Timing
    encoded: Encoded


@dataclass(frozen=True)
class PartStatus:
    """A part of a model that loads on its own (e.g. a video split graph), for /v1/models."""

    name: str
    state: ModelState
    reason: str | None = None
    engine: EngineInfo | None = None


@dataclass(frozen=True)
class PipelineContext:
    """What the model manager gives every pipeline it loads."""

    codec_pool: Executor
    metrics: Metrics
    pixels: PixelBudget
    max_image_pixels: int
    backend: str | None  # forced for every model (SEGSERVE_BACKEND), else each config's preference
    data_path: str  # Settings.data_path: "auto", "cpu" or "device" (semantic models; segserve.pipelines.semantic_device)
    warmup: bool
    drain_timeout_s: float
    # Where batchers come from: here (LocalBatchers), or the engine process (a worker's RemoteBatchers)
    batchers: BatcherFactory


def batch_policy(config: ModelConfig) -> BatchPolicy:
    return BatchPolicy(
        max_batch_size=config.batch_size,
        max_queue_delay_s=config.dynamic_batching.max_queue_delay_ms / 1000.0,
        max_queue_size=config.dynamic_batching.max_queue_size,
    )


def stacked(arrays: list[np.ndarray]) -> np.ndarray:
    """A batch's same-shaped arrays as one (N, ...) array: a view when N is 1, the batch the
    server runs most when it is not saturated (np.stack would copy it)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def load_engines(config: ModelConfig, folder, backend: str | None) -> list[Engine]:
    """``config.instances`` engines on the artifacts in ``folder`` (blocking: run in a thread)."""
    return create_engines(config, folder, backend)


async def warm_up(name: str, config: ModelConfig, run: BatchRun, instances: int) -> int | None:
    """First runs allocate arenas and build kernels: on every instance ``run(instance, n)`` a batch
    of 1 and one of the largest size the batcher may form, before the first request, off the event
    loop. Then, with preferred_batch_size: auto, the batch size measured on them (else None)."""
    loop = asyncio.get_running_loop()
    for instance in range(instances):
        for n in sorted({1, config.batch_size}):
            await loop.run_in_executor(None, run, instance, n)
    if not config.measures_batch_size:
        return None
    return await measured_batch_size(name, run, instances, config.max_batch_size)


class Pipeline:
    """One model version of one task: its engine instances behind one dynamic batcher."""

    task: ClassVar[Task]
    options: ClassVar[tuple[Option, ...]] = ()  # the task's own request options
    label_map: ClassVar[bool] = False  # results carry a uint8 class-id map (gRPC LABELS)
    formats: ClassVar[tuple[OutputFormat, ...]] = tuple(OutputFormat)  # what ``encode`` (and ``draw``) write
    # Whether the answer's fields (encode's body, response_fields) may hold floats or None;
    # without, the JSON renderer checks less (segserve.codecs.jsonbytes.dumps).
    json_floats: ClassVar[bool] = True

    def __init__(self, entry: ModelEntry, context: PipelineContext):
        self.entry = entry
        self.config = entry.config
        self.context = context
        self.engines: list[Engine] = []  # loaded where the batchers run (not in a worker of --workers N)
        self.batcher: Batcher | None = None
        self.video = None  # segserve.pipelines.video.runs.VideoModel, set by start()
        config = self.config
        self.in_flight = InFlight(config.name, config.in_flight_budget)

    def admit(self, cost: int = 1) -> Admission:
        """The request's share of the model's in-flight budget (limits.InFlight)."""
        return self.in_flight.admit(cost, self.batcher.retry_after() if self.batcher is not None else 1.0)

    @property
    def engine_info(self) -> EngineInfo | None:
        return self.batcher.info if self.batcher is not None else None

    @property
    def batch_size(self) -> int:
        """The largest batch the batcher forms: as it runs (measured at load with "auto"), else as configured."""
        return self.batcher.policy.max_batch_size if self.batcher is not None else self.config.batch_size

    @property
    def data_path(self) -> str:
        """Where this model's pixel work runs, for /v1/models and the log: "cpu" (the codec pool),
        or "device:<torch device>" (segserve.pipelines.semantic_device)."""
        return "cpu"

    # -- life -------------------------------------------------------------------------
    async def start(self) -> None:
        """The model's batcher, started where its engines are loaded (``_load``)."""
        name = self.config.name
        self.batcher = (await self.context.batchers.open([name], batch_policy(self.config), self._load))[name]

    async def _load(self) -> dict[str, tuple[list[Callable], EngineInfo, int | None]]:
        """Load the engines (in a thread) and warm them up: the batcher's runners, and the batch
        size measured here when the config asks for it (and warm-up is on)."""
        config = self.config
        self.engines = await asyncio.to_thread(load_engines, config, self.entry.version_dir, self.context.backend)
        self.engines_loaded()
        runners = [self.predict(engine) for engine in self.engines]
        batch_size = None
        if self.context.warmup:
            batch_size = await warm_up(config.name, config, lambda i, n: runners[i]([self.blank_input()] * n), len(runners))
        return {config.name: (runners, self.engines[0].info, batch_size)}

    async def stop(self) -> None:
        if self.video is not None:
            await self.video.stop()
        if self.batcher is not None:
            await self.batcher.stop(self.context.drain_timeout_s)
        for engine in self.engines:
            engine.close()

    def parts(self) -> list[PartStatus]:
        return [] if self.video is None else self.video.parts()

    def engines_loaded(self) -> None:
        """Called once the engines are loaded, before ``predict`` builds their runners: what a task
        decides from its engines (the semantic pipeline: its data path)."""

    # -- request options ---------------------------------------------------------------
    def parse_options(self, query: Mapping[str, str]) -> Any:
        """Validate the request's options (HTTP query or gRPC parameters; raises BadParameter)."""
        unknown = set(query) - {o.name for o in COMMON_OPTIONS + self.options}
        if unknown:
            raise BadParameter(f"unknown query parameter(s) for a {self.task.value} model: {sorted(unknown)}")
        return self.read_options(query)

    def read_options(self, query: Mapping[str, str]) -> Any:
        return None

    def check_format(self, fmt: OutputFormat) -> OutputFormat:
        """``fmt`` if this task answers in it (raises BadParameter otherwise)."""
        if fmt not in self.formats:
            raise BadParameter(f"a {self.task.value} model answers format {[f.value for f in self.formats]}, not {fmt.value}")
        return fmt

    def response_fields(self) -> dict[str, Any]:
        """Fields of every JSON answer besides model, task, size and the body (e.g. classes)."""
        return {}

    # -- the hooks ----------------------------------------------------------------------
    def geometry(self, height: int, width: int) -> Hashable:
        """How an image of this size maps to the model input (a change forces a video keyframe)."""
        raise NotImplementedError

    def decode_size(self, geometry: Hashable) -> tuple[int, int]:
        """The smallest (h, w) an image may be decoded at without losing model-input detail."""
        raise NotImplementedError

    def to_input(self, geometry: Hashable, rgb: np.ndarray) -> Any:
        """A decoded (h, w, 3) uint8 image -> what the batcher takes."""
        raise NotImplementedError

    def blank_input(self) -> Any:
        """A model input for warm-up runs."""
        raise NotImplementedError

    def predict(self, engine: Engine) -> Callable[[list], list]:
        """The batcher's runner for one engine instance: inputs -> one raw output each."""
        raise NotImplementedError

    def encode(self, output: Any, placement: Placement, options: Any, fmt: OutputFormat) -> Encoded:
        """A raw output -> body fields or a PNG at the image's size (blocking: codec pool)."""
        raise NotImplementedError

    def draw(self, rgb: np.ndarray, encoded: Encoded, options: Any) -> np.ndarray:
        """format=overlay: the (h, w, 3) image as received with ``encoded``'s masks drawn in
        (``encode``'s JSON fields; segserve.codecs.overlay)."""
        raise NotImplementedError

    def overlay_jpeg(self, rgb: np.ndarray, output: Any, placement: Placement, options: Any) -> bytes:
        """A raw output's masks, as for JSON, drawn into ``rgb`` (the image or video frame as
        received, at full size): the JPEG of format=overlay (blocking: codec pool)."""
        encoded = self.encode(output, placement, options, OutputFormat.json)
        return encode_jpeg(self.draw(rgb, encoded, options))

    def encode_overlay(self, output: Any, placement: Placement, options: Any, data: bytes) -> Encoded:
        """format=overlay (blocking: codec pool): drawn into the image decoded again at full
        size -- ``decode`` may have read a JPEG draft at a fraction of it. Its pixels are
        already reserved (``decode``)."""
        rgb = decode_image(data, self.context.max_image_pixels).rgb
        return Encoded(jpeg=self.overlay_jpeg(rgb, output, placement, options))

    def decode(self, data: bytes) -> Decoded:
        """Image bytes -> the model input, decoded no larger than it needs (blocking: codec pool).
        Its declared pixels are reserved in the server's budget first; the caller releases them."""
        budget, reserved = self.context.pixels, 0

        def reserve(pixels: int) -> None:
            nonlocal reserved
            budget.reserve(pixels)
            reserved = pixels

        try:
            model_input, placement = self.decode_input(data, reserve)
            return Decoded(model_input, placement, reserved)
        except BaseException:
            budget.release(reserved)
            raise

    def decode_input(self, data: bytes, reserve: Callable[[int], None]) -> tuple[Any, Placement]:
        """``decode``'s work: the model input and its placement, ``reserve`` called with the pixels
        the header declares before any is decoded. PIL's decode, then ``to_input``."""
        image = decode_image(data, self.context.max_image_pixels, self.draft_size, reserve)
        geometry = self.geometry(image.height, image.width)
        return self.to_input(geometry, image.rgb), Placement(image.height, image.width, geometry)

    def draft_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (h, w) an image of this size may be decoded at (codecs.image.DraftSize)."""
        return self.decode_size(self.geometry(height, width))

    # -- one request ----------------------------------------------------------------------
    async def segment_image(self, data: bytes, options: Any, fmt: OutputFormat, deadline: float) -> ImageResult:
        """``deadline`` (monotonic) holds at every stage: work that expired is dropped before
        it starts (the batcher drops it before compute)."""
        loop = asyncio.get_running_loop()
        pool = self.context.codec_pool
        check_deadline(deadline, "decoding")
        decoded = await loop.run_in_executor(pool, self.decode, data)
        try:
            done = await self.batcher.submit(decoded.model_input, deadline)
            check_deadline(deadline, "encoding")
            if fmt == OutputFormat.overlay:
                encoded = await loop.run_in_executor(pool, self.encode_overlay, done.value, decoded.placement, options, data)
            else:
                encoded = await loop.run_in_executor(pool, self.encode, done.value, decoded.placement, options, fmt)
        finally:
            self.context.pixels.release(decoded.reserved_pixels)
        placement = decoded.placement
        return ImageResult(placement.width, placement.height, Timing(done.queue_s, done.compute_s, done.batch_size), encoded)


def fixed_width_ms(seconds: float) -> str:
    """A JSON number padded with leading spaces to a constant width. Identical requests then
    get identical-length bodies, which plain `ab` (without -l) requires: it counts every body
    whose length differs from the first as a failed request."""
    return f"{min(seconds * 1000, 99_999_999.999):12.3f}"


def render_json(pipeline: Pipeline, result: ImageResult, total_s: float) -> bytes:
    """The JSON answer to one segmented image, shared by every transport so HTTP `/segment` and
    gRPC `MASKS_JSON` carry byte-for-byte the same document (json.dumps' bytes, via orjson:
    segserve.codecs.jsonbytes)."""
    config = pipeline.config
    body = {"model": config.name, "task": config.task.value, "width": result.width, "height": result.height}
    body.update(pipeline.response_fields())
    body.update(result.encoded.body)
    timing = result.timing
    timing_ms = (
        f',"timing_ms":{{"queue":{fixed_width_ms(timing.queue_s)},'
        f'"compute":{fixed_width_ms(timing.compute_s)},"total":{fixed_width_ms(total_s)}}}}}'
    )
    return dumps(body, floats=pipeline.json_floats)[:-1] + timing_ms.encode()
