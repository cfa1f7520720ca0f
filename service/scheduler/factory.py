"""Where a pipeline's batchers come from: the seam between one process and several.

A pipeline asks its context's ``BatcherFactory`` to ``open`` the batchers it needs, by name,
with a ``load`` callback that builds their engines (runners), says what they run on and, when
it measured one at load (``preferred_batch_size: auto``), the batch size to close batches at.
``LocalBatchers`` calls it and starts one ``DynamicBatcher`` per name: what a single-process
server and the engine process of ``--workers N`` do. In a worker, ``RemoteBatchers``
(``segserve.scheduler.remote``) never calls it: the engine process has loaded the engines,
and the batchers it returns submit there. Either way the pipeline sees the same interface
(``Batcher``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Awaitable, Callable, Mapping, Protocol, Sequence

from segserve.scheduler.batcher import BatchObserver, BatchPolicy, BatchRunner, Completed, DynamicBatcher


class Batcher(Protocol):
    """What a pipeline uses of a batcher: ``DynamicBatcher``, or ``RemoteBatcher`` in a worker."""

    name: str
    info: Any  # what it runs on (an EngineInfo), for /v1/models and the logs
    policy: BatchPolicy  # as it runs: its max_batch_size may be the one measured at load

    async def submit(self, item: Any, deadline: float | None = None) -> Completed: ...

    def retry_after(self) -> float: ...

    def start(self) -> None: ...

    async def stop(self, drain_timeout_s: float = 30.0) -> None: ...

    @property
    def depth(self) -> int: ...


# name -> (one runner per engine instance, what they run on, the batch size measured at load or None)
Loaded = Mapping[str, tuple[Sequence[BatchRunner], Any, int | None]]


class BatcherFactory(Protocol):
    async def open(self, names: Sequence[str], policy: BatchPolicy, load: Callable[[], Awaitable[Loaded]]) -> dict[str, Batcher]:
        """Started batchers for ``names`` (``load`` builds their runners where the engines live);
        raises what loading raised, wherever that happened."""
        ...


class LocalBatchers:
    """Batchers in this process. ``opened`` (name -> batcher) and ``failed`` (name -> the
    exception its load raised) are what the engine process serves to its workers."""

    def __init__(self, observer: Callable[[str], BatchObserver]):
        self._observer = observer
        self.opened: dict[str, DynamicBatcher] = {}
        self.failed: dict[str, BaseException] = {}

    async def open(self, names: Sequence[str], policy: BatchPolicy, load: Callable[[], Awaitable[Loaded]]) -> dict[str, Batcher]:
        try:
            loaded = await load()
        except Exception as exc:
            self.failed.update(dict.fromkeys(names, exc))
            raise
        batchers = {}
        for name in names:
            runners, info, batch_size = loaded[name]
            runs = policy if batch_size is None else replace(policy, max_batch_size=batch_size)
            batcher = DynamicBatcher(runners, runs, name=name, observer=self._observer(name), info=info)
            batcher.start()
            self.opened[name] = batchers[name] = batcher
        return batchers
