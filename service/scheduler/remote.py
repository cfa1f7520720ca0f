"""Batchers across processes: the engine process of ``segserve serve --workers N`` runs every
``DynamicBatcher`` and serves them (``BatcherServer``); each worker submits to them through
``RemoteBatcher``s (from ``RemoteBatchers``, its ``BatcherFactory``), which have the
DynamicBatcher's interface, so pipelines and transports do not change and batches still form
across the requests of every worker.

Wire: ZeroMQ on an ``ipc://`` socket, a ROUTER in the engine process and a DEALER per worker
(its routing id names it). A message is one tuple pickled with protocol 5, its arrays as
out-of-band buffers, one frame each, sent without a copy (pyzmq copies frames smaller than
``zmq.COPY_THRESHOLD`` itself, where that is cheaper)::

    worker -> engine   ("catalogue",) | ("submit", id, batcher name, deadline, item) | ("cancel", id)
    engine -> worker   ("catalogue", {name: (engine info, batch policy), or the exception its load raised})
                       ("done", id, Completed or the exception, the batcher's retry_after())

What holds across the hop: an exception raised on the engine side (QueueFull with its
Retry-After, DeadlineExceeded, ModelNotReady, an engine error) is raised in the worker -- one
that would not survive pickling as a RuntimeError with its text; deadlines are absolute
``time.monotonic()`` values (CLOCK_MONOTONIC, one clock for every process of a Linux host); a
cancelled submit (the client went away) sends a cancel, so the engine drops it before compute;
the requests of a worker that died are cancelled (``BatcherServer.forget``). No reply can hang a
request: a worker gives up ``ENGINE_GRACE_S`` after the deadline (the engine answers by the
deadline itself), and ``RemoteBatchers.engine_lost`` fails everything pending at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import time
from typing import Any, Awaitable, Callable, Mapping, Sequence

import zmq
import zmq.asyncio

from segserve.errors import DeadlineExceeded, ModelNotReady, ServiceError
from segserve.scheduler.batcher import BatchPolicy, Completed, DynamicBatcher
from segserve.scheduler.factory import Batcher, Loaded

log = logging.getLogger(__name__)

ENGINE_GRACE_S = 1.0  # past a request's deadline, how long a worker still waits for the engine's answer


def _frames(message: tuple) -> list:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    return [head, *(buffer.raw() for buffer in buffers)]


def _portable(exc: BaseException) -> BaseException:
    """``exc``, or a RuntimeError with its text if it would not survive the hop: an engine
    library's own exception type may not pickle, or not unpickle (a constructor that wants
    more than its message), and the worker must get an answer either way."""
    if isinstance(exc, ServiceError):  # segserve's own cross as they are (unchecked: every 503 under overload is one)
        return exc
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
        return exc
    except Exception:  # noqa: BLE001 - whatever the type's reduction raises
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _message(frames: Sequence[zmq.Frame]) -> tuple:
    return pickle.loads(frames[0].buffer, buffers=[frame.buffer for frame in frames[1:]])


def _unbounded(socket: zmq.Socket) -> None:
    # A ROUTER drops what it cannot queue: no high-water mark, so no answer is ever dropped
    # (the batchers' bounded queues are the limit on what is in flight).
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.RCVHWM, 0)
    socket.setsockopt(zmq.LINGER, 0)


def _log_send_failure(sent: asyncio.Future) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.error("batcher message not sent: %s", sent.exception())


class BatcherServer:
    """The engine process's side: every batcher of ``batchers`` served at ``address``."""

    def __init__(self, batchers: Mapping[str, DynamicBatcher], failed: Mapping[str, BaseException], address: str):
        self._batchers = batchers
        self._failed = failed
        self.address = address
        self._context = zmq.asyncio.Context()
        self._socket: zmq.asyncio.Socket | None = None
        self._jobs: dict[tuple[bytes, int], asyncio.Task] = {}
        self._receiver: asyncio.Task | None = None

    async def start(self) -> None:
        self._socket = self._context.socket(zmq.ROUTER)
        _unbounded(self._socket)
        self._socket.bind(self.address)
        self._receiver = asyncio.create_task(self._receive(), name="batcher-server")

    async def stop(self) -> None:
        """After the workers are gone: anything still running is cancelled (no one to answer)."""
        tasks = [self._receiver, *self._jobs.values()] if self._receiver else []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._socket is not None:
            self._socket.close()
        self._context.term()

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def forget(self, identity: bytes) -> int:
        """Cancel the requests of a worker that is gone; how many there were."""
        gone = [task for (worker, _), task in self._jobs.items() if worker == identity]
        for task in gone:
            task.cancel()
        return len(gone)

    def _send(self, identity: bytes, message: tuple) -> None:
        self._socket.send_multipart([identity, *_frames(message)], copy=False).add_done_callback(_log_send_failure)

    async def _receive(self) -> None:
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            try:
                self._handle(frames[0].bytes, _message(frames[1:]))
            except Exception:  # noqa: BLE001 - one bad message must not stop the others' answers
                log.exception("batcher server: a message from %r could not be handled", frames[0].bytes)

    def _handle(self, identity: bytes, message: tuple) -> None:
        op = message[0]
        if op == "submit":
            _, rid, name, deadline, item = message
            key = (identity, rid)
            self._jobs[key] = asyncio.create_task(self._run(key, name, item, deadline))
        elif op == "cancel":
            task = self._jobs.pop((identity, message[1]), None)
            if task is not None:
                task.cancel()
        elif op == "catalogue":
            catalogue: dict[str, Any] = {name: (batcher.info, batcher.policy) for name, batcher in self._batchers.items()}
            failed = {name: _portable(exc) for name, exc in self._failed.items()}
            self._send(identity, ("catalogue", {**catalogue, **failed}))

    async def _run(self, key: tuple[bytes, int], name: str, item: Any, deadline: float | None) -> None:
        batcher = self._batchers.get(name)
        try:
            if batcher is None:
                raise ModelNotReady(f"{name} is not loaded in the engine process")
            outcome: Any = await batcher.submit(item, deadline)
        except asyncio.CancelledError:
            return  # the worker cancelled it, or is gone: no answer is wanted
        except Exception as exc:  # noqa: BLE001 - the worker raises it for its request
            outcome = _portable(exc)
        finally:
            self._jobs.pop(key, None)
        self._send(key[0], ("done", key[1], outcome, batcher.retry_after() if batcher is not None else 1.0))


class RemoteBatcher:
    """DynamicBatcher's interface, in a worker: ``submit`` runs the item in the engine process's
    batcher of the same name."""

    def __init__(self, client: "RemoteBatchers", name: str, policy: BatchPolicy, info: Any):
        self.name = name
        self.policy = policy
        self.info = info
        self.retry_after_s = 1.0  # the engine's estimate, as of its latest answer
        self._client = client
        self._accepting = False
        self._in_flight = 0

    def start(self) -> None:
        self._accepting = True

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests; wait (up to the timeout) for the answers of those in flight."""
        self._accepting = False
        until = time.monotonic() + drain_timeout_s
        while self._in_flight and time.monotonic() < until:
            await asyncio.sleep(0.05)

    @property
    def depth(self) -> int:
        return self._in_flight

    def retry_after(self) -> float:
        return self.retry_after_s

    async def submit(self, item: Any, deadline: float | None = None) -> Completed:
        if not self._accepting:
            raise ModelNotReady(f"model {self.name} is not accepting requests")
        self._in_flight += 1
        try:
            return await self._client.submit(self, item, deadline)
        finally:
            self._in_flight -= 1


class RemoteBatchers:
    """A worker's BatcherFactory: batchers that submit to the engine process at ``address``.
    ``connect`` before the pipelines open their batchers, ``close`` after they stopped."""

    def __init__(self, address: str, identity: bytes):
        self.address = address
        self.identity = identity
        self._context = zmq.asyncio.Context()
        self._socket: zmq.asyncio.Socket | None = None
        self._catalogue: dict[str, Any] = {}
        self._pending: dict[int, tuple[asyncio.Future, RemoteBatcher]] = {}
        self._ids = itertools.count()
        self._receiver: asyncio.Task | None = None

    async def connect(self) -> None:
        self._socket = self._context.socket(zmq.DEALER)
        _unbounded(self._socket)
        self._socket.setsockopt(zmq.ROUTING_ID, self.identity)
        self._socket.connect(self.address)
        await self._socket.send_multipart(_frames(("catalogue",)))
        self._catalogue = _message(await self._socket.recv_multipart(copy=False))[1]
        self._receiver = asyncio.create_task(self._receive(), name="remote-batchers")

    async def close(self) -> None:
        self.engine_lost("the worker is stopping")
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
        if self._socket is not None:
            self._socket.close()
        self._context.term()

    def engine_lost(self, why: str) -> None:
        """Fail every request waiting for the engine process (it is gone, or we are)."""
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(ModelNotReady(why))

    async def open(self, names: Sequence[str], policy: BatchPolicy, load: Callable[[], Awaitable[Loaded]]) -> dict[str, Batcher]:
        """The engine process's batchers ``names`` (it ran ``load``), or the exception its load raised."""
        batchers: dict[str, Batcher] = {}
        for name in names:
            if name not in self._catalogue:
                raise ModelNotReady(f"{name} is not loaded in the engine process")
            entry = self._catalogue[name]
            if isinstance(entry, BaseException):
                raise entry
            info, runs = entry  # the engine process's policy: its batch size may have been measured there
            batcher = RemoteBatcher(self, name, runs, info)
            batcher.start()
            batchers[name] = batcher
        return batchers

    async def submit(self, batcher: RemoteBatcher, item: Any, deadline: float | None) -> Completed:
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, batcher)
        try:
            self._socket.send_multipart(_frames(("submit", rid, batcher.name, deadline, item)), copy=False).add_done_callback(
                _log_send_failure)
            if deadline is None:
                return await future
            return await self._wait(future, deadline + ENGINE_GRACE_S, batcher.name)
        finally:
            del self._pending[rid]
            if future.cancelled() or not future.done():  # no answer came: the engine drops it before compute
                future.cancel()
                self._socket.send_multipart(_frames(("cancel", rid))).add_done_callback(_log_send_failure)

    @staticmethod
    async def _wait(future: asyncio.Future, until: float, name: str) -> Completed:
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = future.cancel()

        timer = asyncio.get_running_loop().call_later(until - time.monotonic(), expire)
        try:
            return await future
        except asyncio.CancelledError:
            if not expired:
                raise
            raise DeadlineExceeded(f"model {name}: the engine process did not answer within the deadline") from None
        finally:
            timer.cancel()

    async def _receive(self) -> None:
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            try:
                self._handle(*_message(frames))
            except Exception:  # noqa: BLE001 - one bad answer must not stop the others
                log.exception("remote batchers: an answer from the engine process could not be handled")

    def _handle(self, op: str, rid: int, outcome: Any, retry_after: float) -> None:
        waiting = self._pending.get(rid)
        if waiting is None:  # given up on here already
            return
        future, batcher = waiting
        batcher.retry_after_s = retry_after
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
