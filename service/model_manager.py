"""Loads the model repository into pipelines, one per model, and tracks each model's state.
Video is part of every model's pipeline; the streams of all of them live here too."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from segserve.config import Settings
from segserve.errors import ModelNotFound, ModelNotReady
from segserve.metrics import Metrics
from segserve.pipelines import PIPELINES, ModelState, Pipeline, PipelineContext
from segserve.pipelines.limits import PixelBudget
from segserve.pipelines.video.runs import VideoStreams
from segserve.repository import ModelEntry, scan
from segserve.scheduler import BatcherFactory, LocalBatchers

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "unknown"  # the metrics label of requests for a model the repository does not hold


@dataclass
class ModelStatus:
    entry: ModelEntry
    state: ModelState
    reason: str | None = None
    pipeline: Pipeline | None = None

    @property
    def ready(self) -> bool:
        return self.state == ModelState.ready and self.pipeline is not None


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics, batchers: BatcherFactory | None = None):
        """``batchers``: where the pipelines' batchers run; default here (LocalBatchers)."""
        self.settings = settings
        self.metrics = metrics
        self.batchers = batchers or LocalBatchers(metrics.batch_observer)
        self.codec_pool = ThreadPoolExecutor(settings.codec_thread_count(), thread_name_prefix="codec")
        self.context = PipelineContext(
            codec_pool=self.codec_pool,
            metrics=metrics,
            pixels=PixelBudget(settings.max_inflight_pixels),
            max_image_pixels=settings.max_image_pixels,
            backend=settings.backend,
            data_path=settings.data_path,
            warmup=settings.warmup,
            drain_timeout_s=settings.shutdown_drain_s,
            batchers=self.batchers,
        )
        self.streams = VideoStreams(settings, metrics.registry, self.codec_pool)
        self.models: dict[str, ModelStatus] = {}
        self.ready = False

    @property
    def default_model(self) -> str | None:
        """SEGSERVE_DEFAULT_MODEL, else the repository's first model by name -- whatever its
        state: a default that failed to load answers 503 with the reason, instead of quietly
        becoming another model."""
        return self.settings.default_model or next(iter(self.models), None)

    def label(self, name: str | None) -> str:
        """The metrics label for a requested model name: one of the repository's models, or
        ``unknown`` -- a client's made-up names must not become label values (series)."""
        name = name or self.default_model
        return name if name in self.models else UNKNOWN_MODEL

    def in_flight(self) -> dict[str, int]:
        """Each loaded model's share of admitted requests and chunks now in flight."""
        return {name: s.pipeline.in_flight.count for name, s in self.models.items() if s.pipeline is not None}

    def ready_models(self) -> list[str]:
        return [name for name, s in self.models.items() if s.ready]

    def get(self, name: str | None) -> Pipeline:
        name = name or self.default_model
        status = self.models.get(name) if name else None
        if status is None:
            raise ModelNotFound(f"unknown model {name!r}; available: {sorted(self.models)}")
        if not status.ready:
            raise ModelNotReady(f"model {name} is {status.state.value}" + (f": {status.reason}" if status.reason else ""))
        return status.pipeline

    async def start(self) -> None:
        entries = scan(self.settings.model_repository)
        wanted = set(self.settings.models)
        if wanted:
            missing = wanted - {e.config.name for e in entries}
            for name in sorted(missing):
                log.error("model %s requested but not in %s", name, self.settings.model_repository)
            entries = [e for e in entries if e.config.name in wanted]
        if not entries:
            log.warning("no models found in %s: run `segserve export` first", self.settings.model_repository)
        for entry in entries:
            self.models[entry.config.name] = ModelStatus(entry, ModelState.loading)
        for entry in entries:
            await self._load(entry)
        await self.streams.start()
        self.ready = True

    async def _load(self, entry: ModelEntry) -> None:
        name = entry.config.name
        status = self.models[name]
        gauge = self.metrics.model_ready.labels(name)
        gauge.set(0)
        if entry.error:
            status.state, status.reason = ModelState.unavailable, entry.error
            log.error("model %s unavailable: %s", name, entry.error)
            return
        pipeline = PIPELINES[entry.config.task](entry, self.context)
        try:
            await pipeline.start()
        except Exception as exc:  # noqa: BLE001 - one broken model must not stop the others
            status.state, status.reason = ModelState.unavailable, str(exc)
            log.exception("model %s failed to load", name)
            await pipeline.stop()
            return
        status.pipeline, status.state = pipeline, ModelState.ready
        gauge.set(1)
        if entry.config.weights.source == "random":
            log.warning("model %s serves RANDOM weights (%s): masks are meaningless", name, entry.config.weights.detail)
        engine = pipeline.engine_info
        log.info("model %s v%s ready on %s/%s, data path %s", name, entry.version, engine.backend, engine.device, pipeline.data_path)

    async def stop(self) -> None:
        """Streams first (no new chunk finds its state), then every model drains its batchers."""
        self.ready = False
        queued = {name: s.pipeline.batcher.depth for name, s in self.models.items() if s.pipeline is not None and s.pipeline.batcher}
        log.info("stopping: %d video streams dropped; draining batchers (%d queued)", len(self.streams.streams), sum(queued.values()))
        await self.streams.stop()
        running = [s for s in self.models.values() if s.pipeline is not None]
        outcomes = await asyncio.gather(*(s.pipeline.stop() for s in running), return_exceptions=True)
        for status, outcome in zip(running, outcomes):
            if isinstance(outcome, Exception):
                log.error("model %s failed to stop cleanly", status.entry.config.name, exc_info=outcome)
        self.codec_pool.shutdown(wait=False)
        log.info("stopped: every model's batchers drained")
