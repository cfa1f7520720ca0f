"""Loads the model repository into served models and tracks each model's state."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from segserve.config import Settings
from segserve.engine import EngineUnavailable, create_engine
from segserve.errors import ModelNotFound, ModelNotReady
from segserve.metrics import Metrics
from segserve.pipelines import PIPELINES, ServedModel
from segserve.repository import ModelEntry, scan

log = logging.getLogger(__name__)


@dataclass
class ModelStatus:
    entry: ModelEntry
    state: str  # "LOADING" | "READY" | "UNAVAILABLE"
    reason: str | None = None
    served: ServedModel | None = None


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.codec_pool = ThreadPoolExecutor(settings.codec_thread_count(), thread_name_prefix="codec")
        self.models: dict[str, ModelStatus] = {}
        self.ready = False

    @property
    def default_model(self) -> str | None:
        if self.settings.default_model:
            return self.settings.default_model
        ready = [name for name, s in self.models.items() if s.state == "READY"]
        return ready[0] if ready else next(iter(self.models), None)

    def get(self, name: str | None) -> ServedModel:
        name = name or self.default_model
        status = self.models.get(name) if name else None
        if status is None:
            raise ModelNotFound(f"unknown model {name!r}; available: {sorted(self.models)}")
        if status.state != "READY" or status.served is None:
            raise ModelNotReady(f"model {name} is {status.state}" + (f": {status.reason}" if status.reason else ""))
        return status.served

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
            self.models[entry.config.name] = ModelStatus(entry, "LOADING")
        for entry in entries:
            await self._load(entry)
        self.ready = True

    async def _load(self, entry: ModelEntry) -> None:
        name = entry.config.name
        status = self.models[name]
        gauge = self.metrics.model_ready.labels(name)
        gauge.set(0)
        if entry.error:
            status.state, status.reason = "UNAVAILABLE", entry.error
            log.error("model %s unavailable: %s", name, entry.error)
            return
        pipeline_cls = PIPELINES.get(entry.config.task.value)
        if pipeline_cls is None:
            status.state, status.reason = "UNAVAILABLE", f"no pipeline for task {entry.config.task.value}"
            return
        try:
            engines = await asyncio.to_thread(
                lambda: [create_engine(entry.config, entry.version_dir, self.settings.backend) for _ in range(entry.config.instances)]
            )
            served = pipeline_cls(entry, engines, self.codec_pool, self.metrics.batch_observer(name), self.settings.max_image_pixels)
            await served.start(self.settings.warmup)
        except (EngineUnavailable, Exception) as exc:  # noqa: BLE001 - one broken model must not stop the others
            status.state, status.reason = "UNAVAILABLE", str(exc)
            log.exception("model %s failed to load", name)
            return
        status.served, status.state = served, "READY"
        gauge.set(1)
        weights = entry.config.weights
        if weights.source == "random":
            log.warning("model %s serves RANDOM weights (%s): masks are meaningless", name, weights.detail)
        log.info("model %s v%s ready on %s/%s", name, entry.version, served.engine_info.backend, served.engine_info.device)

    async def stop(self) -> None:
        self.ready = False
        await asyncio.gather(
            *(s.served.stop(self.settings.shutdown_drain_s) for s in self.models.values() if s.served is not None),
            return_exceptions=True,
        )
        self.codec_pool.shutdown(wait=False)
