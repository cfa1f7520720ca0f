"""Batchers across a process boundary (segserve.scheduler.remote), here across a real ZeroMQ ipc://
socket inside one process: what a worker of `--workers N` sees of the engine process's batcher.
The runner is test_batcher's (doubles its inputs, can be held or made to fail)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from segserve.errors import DeadlineExceeded, ModelNotReady, QueueFull
from segserve.scheduler.remote import ENGINE_GRACE_S, BatcherServer, RemoteBatchers
from tests.test_batcher import RecordingRunner, make, until

WORKER = b"worker-0-1"


@pytest.fixture
async def link(tmp_path):
    """(runner, the engine side's batcher, its server, a worker's batcher "t" on it)."""
    runner = RecordingRunner()
    batcher = make(runner, max_batch=2, queue=1)
    batcher.info = {"backend": "recording"}
    server = BatcherServer({"t": batcher}, {"broken": ValueError("no such engine")}, f"ipc://{tmp_path / 'engine.sock'}")
    await server.start()
    client = RemoteBatchers(server.address, WORKER)
    await client.connect()
    remote = (await client.open(["t"], batcher.policy, load=None))["t"]
    yield runner, batcher, server, client, remote
    runner.release.set()
    await client.close()
    await server.stop()
    await batcher.stop(1.0)


async def test_results_and_arrays_come_back_as_the_batcher_gave_them(link):
    runner, batcher, _, _, remote = link
    assert remote.info == {"backend": "recording"}
    image = np.arange(3 * 64 * 64, dtype=np.uint8).reshape(3, 64, 64)  # over zmq's copy threshold: a frame of its own
    done = await remote.submit(image, time.monotonic() + 5)
    np.testing.assert_array_equal(done.value, image * 2)
    assert done.batch_size == 1 and done.compute_s >= 0 and done.queue_s >= 0


async def test_a_load_failure_in_the_engine_is_raised_where_the_batcher_is_opened(link):
    _, batcher, _, client, _ = link
    with pytest.raises(ValueError, match="no such engine"):
        await client.open(["broken"], batcher.policy, load=None)
    with pytest.raises(ModelNotReady):
        await client.open(["never-loaded"], batcher.policy, load=None)


async def test_queue_full_and_engine_errors_are_raised_in_the_worker(link):
    runner, _, _, _, remote = link
    runner.release.clear()  # the first batch holds the engine
    running = asyncio.ensure_future(remote.submit(1, time.monotonic() + 10))
    await until(lambda: runner.calls == 1)
    queued = asyncio.ensure_future(remote.submit(2, time.monotonic() + 10))
    await asyncio.sleep(0.1)
    with pytest.raises(QueueFull) as refused:
        await remote.submit(3, time.monotonic() + 10)
    assert refused.value.retry_after_s >= 1
    runner.release.set()
    assert [(await running).value, (await queued).value] == [2, 4]
    runner.fail_on = 5
    with pytest.raises(RuntimeError, match="engine exploded"):
        await remote.submit(5, time.monotonic() + 10)


async def test_a_cancelled_submit_is_dropped_in_the_engine_before_compute(link):
    runner, batcher, server, _, remote = link
    runner.release.clear()
    running = asyncio.ensure_future(remote.submit(1, time.monotonic() + 10))
    await until(lambda: runner.calls == 1)
    queued = asyncio.ensure_future(remote.submit(2, time.monotonic() + 10))
    await until(lambda: batcher.depth == 1)
    queued.cancel()  # the client went away
    await until(lambda: server.in_flight == 1)
    runner.release.set()
    assert (await running).value == 2
    assert runner.batches == [[1]]  # 2 never ran
    assert queued.cancelled()


async def test_a_forgotten_worker_has_its_requests_cancelled(link):
    runner, _, server, _, remote = link
    runner.release.clear()
    pending = asyncio.ensure_future(remote.submit(1, time.monotonic() + ENGINE_GRACE_S))
    await until(lambda: server.in_flight == 1)
    assert server.forget(WORKER) == 1
    await until(lambda: server.in_flight == 0)
    with pytest.raises(DeadlineExceeded):  # no answer ever comes: the worker gives up after the deadline
        await pending


async def test_a_lost_engine_fails_what_is_pending_at_once(link):
    runner, _, _, client, remote = link
    runner.release.clear()
    pending = asyncio.ensure_future(remote.submit(1, None))
    await until(lambda: runner.calls == 1)
    client.engine_lost("the engine process is gone")
    with pytest.raises(ModelNotReady, match="gone"):
        await pending


class EngineFault(Exception):
    """An engine library's exception with a constructor of its own: it pickles, but does not unpickle."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


async def test_an_engine_error_that_cannot_cross_arrives_as_its_text(tmp_path):
    def faulty(items):
        raise EngineFault("device lost", 7)

    batcher = make(faulty)
    server = BatcherServer({"t": batcher}, {}, f"ipc://{tmp_path / 'engine.sock'}")
    await server.start()
    client = RemoteBatchers(server.address, WORKER)
    await client.connect()
    try:
        remote = (await client.open(["t"], batcher.policy, load=None))["t"]
        with pytest.raises(RuntimeError, match="EngineFault: device lost"):
            await remote.submit(1, time.monotonic() + 5)
        with pytest.raises(RuntimeError, match="EngineFault"):  # and the link still answers
            await remote.submit(2, time.monotonic() + 5)
    finally:
        await client.close()
        await server.stop()
        await batcher.stop(1.0)
