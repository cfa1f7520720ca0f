"""Per-model dynamic batching: the only scheduling policy in segserve, with no HTTP in it.

Requests wait in one bounded FIFO queue. Each engine instance has a worker that takes the
oldest request, then keeps collecting until the batch is full or ``max_queue_delay`` has
passed since that oldest request arrived (Triton's semantics), and runs the batch on the
instance's own thread. So an idle server answers a lone request after at most the delay,
and a loaded one runs full batches with no waiting at all.

While an instance runs a batch, a full batch waiting in the queue is handed to it at once,
queued on its thread behind the running one (``PIPELINE_DEPTH``): the instance starts it the
moment it finishes, instead of idling until the event loop, busy with other requests' HTTP,
gets round to collecting the next batch. Only a full batch goes early, so early batches are
the batches the worker would have formed anyway; at low load nothing changes. A job queued
that way still counts against ``max_queue_size``, and is still dropped before compute if it
was cancelled or its deadline passed while it waited.

Guarantees: a full queue refuses at once (``QueueFull``); a request past its deadline gets
``DeadlineExceeded`` and is dropped before compute if it has not started; a cancelled
request (client went away) is dropped before compute; a failing batch fails only its own
requests. Every submitted request gets exactly one outcome.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Protocol, Sequence, TypeVar

from segserve.errors import DeadlineExceeded, ModelNotReady, QueueFull
from segserve.scheduler.clock import Clock, MonotonicClock

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BatchRunner = Callable[[list[T]], list[R]]  # blocking; runs on its instance's thread

PIPELINE_DEPTH = 2  # batches handed to one instance at a time: the running one and the next


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int


@dataclass(frozen=True)
class Completed(Generic[R]):
    value: R
    queue_s: float  # enqueue -> its batch started
    compute_s: float  # the batch's run time
    batch_size: int


class BatchObserver(Protocol):
    def batch_done(self, size: int, queue_s: Sequence[float], compute_s: float, ok: bool) -> None: ...

    def queue_depth(self, depth: int) -> None: ...

    def dropped(self, reason: str) -> None: ...


class _NullObserver:
    def batch_done(self, size, queue_s, compute_s, ok):
        pass

    def queue_depth(self, depth):
        pass

    def dropped(self, reason):
        pass


class _Job(Generic[T]):
    __slots__ = ("item", "future", "enqueued_at", "deadline")

    def __init__(self, item: T, future: asyncio.Future, enqueued_at: float, deadline: float | None):
        self.item = item
        self.future = future
        self.enqueued_at = enqueued_at
        self.deadline = deadline


@dataclass(frozen=True)
class _Ran(Generic[R]):
    """A batch's run, as its instance's thread saw it."""

    jobs: list  # the _Jobs it ran: those still wanted when it started
    results: list[R]
    error: Exception | None
    started: float  # in the batcher's clock
    ended: float


class DynamicBatcher(Generic[T, R]):
    def __init__(
        self,
        runners: Sequence[BatchRunner],
        policy: BatchPolicy,
        *,
        name: str = "model",
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
        info: object = None,
    ):
        if not runners:
            raise ValueError("at least one runner (engine instance) is required")
        self.name = name
        self.policy = policy
        self.info = info  # what its runners run on (an EngineInfo), for /v1/models and the logs
        self._runners = list(runners)
        self._clock = clock or MonotonicClock()
        self._observer = observer or _NullObserver()
        self._queue: deque[_Job[T]] = deque()
        self._not_empty = asyncio.Event()
        self._busy_workers: list[asyncio.Future] = []  # woken when a full batch is waiting, to hand it on
        self._handed_on = 0  # jobs in batches queued behind a running one: waiting, not in _queue
        self._workers: list[asyncio.Task] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._accepting = False
        self._batch_s_ewma: float | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._workers:
            return
        self._accepting = True
        for i, runner in enumerate(self._runners):
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-instance{i}")
            self._executors.append(executor)
            self._workers.append(asyncio.create_task(self._work(runner, executor), name=f"batcher-{self.name}-{i}"))

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish the queued ones (up to the timeout), then stop."""
        self._accepting = False
        self._not_empty.set()  # wake idle workers so they see the shutdown
        if self._workers:
            done, pending = await asyncio.wait(self._workers, timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        while self._queue:  # anything the drain did not reach still gets an answer
            self._fail(self._queue.popleft(), ModelNotReady(f"model {self.name} is shutting down"))
        for executor in self._executors:
            executor.shutdown(wait=False)
        self._workers.clear()
        self._executors.clear()

    @property
    def depth(self) -> int:
        """Jobs waiting for compute: in the queue, or handed to a busy instance."""
        return len(self._queue) + self._handed_on

    # -- submission ------------------------------------------------------------------
    async def submit(self, item: T, deadline: float | None = None) -> Completed[R]:
        """Queue ``item`` and wait for its result. ``deadline`` is in the batcher's clock."""
        if not self._accepting:
            raise ModelNotReady(f"model {self.name} is not accepting requests")
        if self.depth >= self.policy.max_queue_size:
            self._observer.dropped("queue_full")
            raise QueueFull(f"model {self.name}: queue full ({self.policy.max_queue_size})", retry_after_s=self.retry_after())
        now = self._clock.now()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded("deadline already passed")
        job = _Job(item, asyncio.get_running_loop().create_future(), now, deadline)
        self._queue.append(job)
        self._not_empty.set()
        if self._full_batch_waiting():
            for wake in self._busy_workers:
                if not wake.done():
                    wake.set_result(None)
        self._observer.queue_depth(self.depth)
        try:
            if deadline is None:
                return await job.future
            if not await self._wait_until(job.future, deadline):
                raise DeadlineExceeded(f"model {self.name}: no result within the deadline")
            return job.future.result()
        finally:
            if not job.future.done():  # cancelled by the caller or timed out: drop before compute
                job.future.cancel()

    async def _wait_until(self, future: asyncio.Future, deadline: float) -> bool:
        """Wait for ``future`` until ``deadline``; whether it finished (else it is cancelled)."""
        if type(self._clock) is MonotonicClock:
            # The loop's own timer on the future: no sleeping task, no asyncio.wait, no extra
            # loop pass to cancel either, per request (the batcher's clock is the loop's then).
            expired = False

            def expire() -> None:
                nonlocal expired
                expired = future.cancel()

            timer = asyncio.get_running_loop().call_later(deadline - self._clock.now(), expire)
            try:
                await future
            except asyncio.CancelledError:
                if not expired:
                    raise
            finally:
                timer.cancel()
            return not expired
        timer = asyncio.ensure_future(self._clock.sleep(deadline - self._clock.now()))
        try:
            await asyncio.wait({future, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return future.done()

    def retry_after(self) -> float:
        """Seconds until the queue ahead has likely drained; at least one."""
        batches_ahead = math.ceil(self.depth / self.policy.max_batch_size) / len(self._runners)
        per_batch = self._batch_s_ewma or 0.1
        return max(1.0, math.ceil(batches_ahead * per_batch))

    # -- workers ---------------------------------------------------------------------
    def _take_live(self) -> _Job[T] | None:
        """Pop the oldest job that still wants an answer; expire/drop the others."""
        now = self._clock.now()
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():
                self._observer.dropped("cancelled")
            elif job.deadline is not None and job.deadline <= now:
                self._observer.dropped("deadline")
                self._fail(job, DeadlineExceeded("deadline passed while queued"))
            else:
                return job
        self._not_empty.clear()
        return None

    async def _wait_for_item(self, timeout_s: float) -> None:
        waiter = asyncio.ensure_future(self._not_empty.wait())
        timer = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()

    async def _collect(self) -> list[_Job[T]] | None:
        """The next batch, or None once stopped with nothing left to do."""
        while True:
            first = self._take_live()
            if first is not None:
                break
            if not self._accepting:
                return None
            await self._not_empty.wait()
        batch = self._fill([first])
        window_end = first.enqueued_at + self.policy.max_queue_delay_s
        while len(batch) < self.policy.max_batch_size:
            remaining = window_end - self._clock.now()
            if remaining <= 0 or not self._accepting:
                break
            await self._wait_for_item(remaining)
            self._fill(batch)
        return batch

    def _fill(self, batch: list[_Job[T]]) -> list[_Job[T]]:
        """``batch`` topped up with live jobs from the queue, without waiting, up to a full batch."""
        while len(batch) < self.policy.max_batch_size:
            job = self._take_live()
            if job is None:
                break
            batch.append(job)
        return batch

    def _full_batch_waiting(self) -> bool:
        return len(self._queue) >= self.policy.max_batch_size

    async def _until_done_or_full(self, running: asyncio.Future) -> None:
        """Until ``running`` is done or ``submit`` has filled a batch: one future and one
        callback per batch (a task and ``asyncio.wait`` would cost the loop several times that)."""
        wake = running.get_loop().create_future()

        def woken(_: asyncio.Future) -> None:
            if not wake.done():
                wake.set_result(None)

        running.add_done_callback(woken)
        self._busy_workers.append(wake)
        try:
            await wake
        finally:
            running.remove_done_callback(woken)
            self._busy_workers.remove(wake)

    def _run(self, runner: BatchRunner, jobs: list[_Job[T]]) -> "_Ran":
        """On the instance's thread: the batch's jobs that still want an answer, run."""
        started = self._clock.now()
        # done() reads one field of a future the loop owns: a job cancelled right after the check
        # is computed and its result dropped (_finish), never answered twice.
        live = [job for job in jobs if not job.future.done() and (job.deadline is None or job.deadline > started)]
        if not live:
            return _Ran(live, [], None, started, started)
        try:
            results = runner([job.item for job in live])
            if len(results) != len(live):
                raise RuntimeError(f"runner returned {len(results)} results for a batch of {len(live)}")
        except Exception as exc:  # noqa: BLE001 - the batch's requests get the error, the worker lives on
            return _Ran(live, [], exc, started, self._clock.now())
        return _Ran(live, results, None, started, self._clock.now())

    async def _work(self, runner: BatchRunner, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        handed: deque[tuple[list[_Job[T]], asyncio.Future]] = deque()  # the running batch first

        def hand(batch: list[_Job[T]]) -> None:
            if handed:
                self._handed_on += len(batch)
            handed.append((batch, loop.run_in_executor(executor, self._run, runner, batch)))
            self._observer.queue_depth(self.depth)

        try:
            while True:
                if not handed:
                    batch = await self._collect()
                    if batch is None:
                        return
                    hand(batch)
                while len(handed) < PIPELINE_DEPTH and self._full_batch_waiting():
                    batch = self._fill([])
                    if batch:
                        hand(batch)
                jobs, running = handed[0]
                if len(handed) < PIPELINE_DEPTH:
                    await self._until_done_or_full(running)
                    if not running.done():
                        continue  # a full batch came in: hand it on first
                ran = await running
                handed.popleft()
                if handed:
                    self._handed_on -= len(handed[0][0])  # the next one is running now
                self._finish(jobs, ran)
        finally:  # cancelled (a drain past its timeout): the batches handed out still get an answer
            for jobs, _ in handed:
                for job in jobs:
                    self._fail(job, ModelNotReady(f"model {self.name} is shutting down"))

    def _finish(self, jobs: list[_Job[T]], ran: "_Ran") -> None:
        live = {id(job) for job in ran.jobs}
        for job in jobs:
            if id(job) in live:
                continue
            if job.future.done():
                self._observer.dropped("cancelled")
            else:
                self._observer.dropped("deadline")
                self._fail(job, DeadlineExceeded("deadline passed while queued"))
        if not ran.jobs:
            return
        compute_s = ran.ended - ran.started
        queue_s = [ran.started - job.enqueued_at for job in ran.jobs]
        if ran.error is not None:
            # one line: each request's own answer logs the traceback, with its request id
            log.error("model %s: batch of %d failed: %s: %s", self.name, len(ran.jobs), type(ran.error).__name__, ran.error)
            self._observer.batch_done(len(ran.jobs), queue_s, compute_s, ok=False)
            for job in ran.jobs:
                self._fail(job, ran.error)
            return
        self._batch_s_ewma = compute_s if self._batch_s_ewma is None else 0.8 * self._batch_s_ewma + 0.2 * compute_s
        self._observer.batch_done(len(ran.jobs), queue_s, compute_s, ok=True)
        for job, result, waited in zip(ran.jobs, ran.results, queue_s):
            if not job.future.done():
                job.future.set_result(Completed(result, waited, compute_s, len(ran.jobs)))

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
