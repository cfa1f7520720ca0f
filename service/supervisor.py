"""`segserve serve --workers N`: one engine process and N HTTP worker processes.

One process cannot serve more requests a second than its GIL allows (~2 ms held per request),
whatever the cores or the accelerator. So HTTP and the per-request work (decode, letterbox,
restore, encode) run in N worker processes, while the engines and their batchers stay in one
engine process -- one batcher per model, so batches still form across every client:

* The engine process (the parent, this module's ``serve_workers``) runs the app's lifespan
  without serving its routes: the models' engines, warm-up and batchers (the video split
  parts' too), gRPC and the metrics port. It serves the batchers over ZeroMQ
  (``segserve.scheduler.remote.BatcherServer``) on an ``ipc://`` socket in a private
  temporary folder, binds the HTTP port and starts the workers.
* Each worker (``run_worker``, a spawned process) serves the same FastAPI app with uvicorn on
  that one listening socket, passed down to it; its pipelines' batchers are
  ``RemoteBatcher``s, so it never loads an engine.
* Metrics: prometheus_client's multiprocess mode, in the same private folder: a scrape of any
  process adds up every process's.

The parent starts a new worker in place of one that dies (SIGKILL, a crash): the requests it
had in flight are lost, and cancelled in the engine. On SIGTERM (or SIGINT) it passes SIGTERM
to the workers -- each turns readiness off, waits ``shutdown_delay_s``, stops accepting and
answers its requests in flight, as a single-process server does -- waits for them, then stops
gRPC and drains the batchers (the lifespan's end) and exits; each step logged with its counts.
A second signal kills the workers at once. A worker whose engine process is gone (its parent
changed) fails what it has pending and stops.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from segserve import logs
from segserve.config import Settings
from segserve.metrics import process_gone, share_across_processes
from segserve.scheduler.remote import BatcherServer, RemoteBatchers
from segserve.server import create_app, inside
from segserve.transport.http.server import DrainingServer, uvicorn_config

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the parent looks for dead workers, and a worker for its parent
# Past shutdown_delay_s + shutdown_drain_s, how long a worker still gets to exit before SIGKILL.
WORKER_EXIT_MARGIN_S = 10.0
BACKLOG = 2048  # uvicorn's default


def worker_identity(index: int, pid: int) -> bytes:
    """A worker's ZeroMQ routing id, which the parent knows it by."""
    return b"worker-%d-%d" % (index, pid)


def listen(settings: Settings) -> socket.socket:
    """The HTTP port, bound once here; every worker accepts on it (the kernel shares the
    connections out between the processes waiting in accept)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server((settings.host, settings.port), family=family, backlog=BACKLOG)
    sock.set_inheritable(True)
    return sock


def serve_workers(settings: Settings) -> int:
    private = Path(tempfile.mkdtemp(prefix="segserve-"))
    try:
        (private / "metrics").mkdir()
        share_across_processes(private / "metrics")
        with listen(settings) as listener:
            return asyncio.run(EngineProcess(settings, listener, f"ipc://{private / 'engine.sock'}").run())
    finally:
        shutil.rmtree(private, ignore_errors=True)


class EngineProcess:
    def __init__(self, settings: Settings, listener: socket.socket, address: str):
        self.settings = settings
        self.listener = listener
        self.address = address
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self._spawn_context = multiprocessing.get_context("spawn")  # a fresh interpreter: no engine state forked into it
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._signal = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        app = create_app(self.settings)
        manager = app.state.manager
        async with app.router.lifespan_context(app):
            server = BatcherServer(manager.batchers.opened, manager.batchers.failed, self.address)
            await server.start()
            try:
                if not self._stopping.is_set():
                    self.workers = [self._spawn(i) for i in range(self.settings.worker_count())]
                    log.info("engine process %d: %d HTTP workers on %s:%d (pids %s)", os.getpid(), len(self.workers),
                             self.settings.host, self.settings.port, ", ".join(str(p.pid) for p in self.workers))
                    await self._supervise(server)
                manager.ready = False
                await self._stop_workers(server)
            finally:
                await server.stop()
        return 0

    def _on_signal(self, sig: int) -> None:
        if self._stopping.is_set():
            log.warning("signal %d again: stopping the workers at once", sig)
            self._forced.set()
        self._signal = sig
        self._stopping.set()

    def _spawn(self, index: int) -> multiprocessing.process.BaseProcess:
        process = self._spawn_context.Process(target=run_worker, args=(self.settings, self.listener, self.address, index),
                                              name=f"segserve-worker-{index}")
        process.start()
        return process

    async def _supervise(self, server: BatcherServer) -> None:
        """Until a signal: a new worker in place of any that exits."""
        while not self._stopping.is_set():
            for index, process in enumerate(self.workers):
                if process.exitcode is None:
                    continue
                lost = server.forget(worker_identity(index, process.pid))
                process_gone(process.pid)
                self.workers[index] = self._spawn(index)
                log.error("worker %d (pid %d) exited with %s; its %d requests in the engine cancelled; worker %d restarted "
                          "as pid %d", index, process.pid, process.exitcode, lost, index, self.workers[index].pid)
            try:
                await asyncio.wait_for(self._stopping.wait(), POLL_S)
            except TimeoutError:
                pass

    async def _stop_workers(self, server: BatcherServer) -> None:
        live = [p for p in self.workers if p.exitcode is None]
        log.info("signal %d: stopping %d workers (each turns readiness off and answers its requests in flight); "
                 "%d requests in the engine", self._signal, len(live), server.in_flight)
        for process in live:
            os.kill(process.pid, signal.SIGTERM)
        settings = self.settings
        give_up = asyncio.get_running_loop().time() + settings.shutdown_delay_s + settings.shutdown_drain_s + WORKER_EXIT_MARGIN_S
        while any(p.exitcode is None for p in live) and not self._forced.is_set() and asyncio.get_running_loop().time() < give_up:
            await asyncio.sleep(0.05)
        killed = [p for p in live if p.exitcode is None]
        for process in killed:
            process.kill()
        for process in self.workers:
            await asyncio.to_thread(process.join)
            process_gone(process.pid)
        log.info("workers stopped (exit codes %s; %d killed); %d requests left in the engine",
                 ", ".join(str(p.exitcode) for p in self.workers), len(killed), server.in_flight)


class EngineLink:
    """A worker's tie to the engine process: the remote batchers' connection, and a watch on
    the parent -- when it is gone, what is pending fails and the worker stops."""

    def __init__(self, batchers: RemoteBatchers):
        self.batchers = batchers
        self._parent = os.getppid()
        self._watch: asyncio.Task | None = None

    async def start(self) -> None:
        await self.batchers.connect()
        self._watch = asyncio.create_task(self._watch_parent(), name="engine-watch")

    async def stop(self) -> None:
        self._watch.cancel()
        await self.batchers.close()

    async def _watch_parent(self) -> None:
        while os.getppid() == self._parent:
            await asyncio.sleep(POLL_S)
        log.error("the engine process (pid %d) is gone: failing the requests in flight and stopping", self._parent)
        self.batchers.engine_lost("the engine process is gone")
        os.kill(os.getpid(), signal.SIGTERM)


def run_worker(settings: Settings, listener: socket.socket, address: str, index: int) -> None:
    """One HTTP worker: the app on ``listener``, its batchers the engine process's at ``address``."""
    # A process group of its own: a terminal's Ctrl-C reaches the parent alone, which stops
    # the workers in order (a second SIGINT here would be uvicorn's stop-at-once).
    os.setpgid(0, 0)
    logs.configure(settings.log_level, process_name=True)
    link = EngineLink(RemoteBatchers(address, worker_identity(index, os.getpid())))
    app = create_app(settings, link.batchers, engine_side=False)
    app.router.lifespan_context = inside(app.router.lifespan_context, link.start, link.stop)
    DrainingServer(uvicorn_config(settings, app), app.state.manager, settings.shutdown_delay_s).run(sockets=[listener])
