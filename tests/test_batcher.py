"""The dynamic batcher on its own: a hand-driven clock for timing, real threads and tasks
for concurrency. No HTTP, no engine."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from segserve.errors import DeadlineExceeded, ModelNotReady, QueueFull
from segserve.scheduler import BatchPolicy, DynamicBatcher
from segserve.scheduler.clock import ManualClock


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(condition, timeout_s: float = 5.0) -> None:
    """Wait (real time) for work running on executor threads."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


class RecordingRunner:
    """Doubles its inputs; records every batch; can be held or made to fail."""

    def __init__(self, fail_on=None):
        self.batches: list[list] = []
        self.release = threading.Event()
        self.release.set()
        self.calls = 0  # batches that entered the engine (possibly still held there)
        self.fail_on = fail_on

    def __call__(self, items):
        self.calls += 1
        self.release.wait(10)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("engine exploded")
        return [x * 2 for x in items]


class CountingObserver:
    def __init__(self):
        self.drops: list[str] = []

    def batch_done(self, size, queue_s, compute_s, ok):
        pass

    def queue_depth(self, depth):
        pass

    def dropped(self, reason):
        self.drops.append(reason)


def make(runner, clock=None, max_batch=4, delay_s=0.005, queue=64, runners=1, observer=None):
    b = DynamicBatcher([runner] * runners, BatchPolicy(max_batch, delay_s, queue), name="t", clock=clock, observer=observer)
    b.start()
    return b


async def held_instance(clock=None, max_batch=1, queue=64, observer=None):
    """A one-instance batcher (no queue delay) whose instance is busy: job 0 taken by the
    worker and held in the engine until ``runner.release`` is set. (runner, batcher, job 0's task)"""
    runner = RecordingRunner()
    runner.release.clear()
    b = make(runner, clock, max_batch=max_batch, delay_s=0, queue=queue, observer=observer)
    first = asyncio.create_task(b.submit(0))
    await until(lambda: runner.calls == 1)
    return runner, b, first


async def test_fills_to_max_batch_without_waiting_for_the_delay():
    clock, runner = ManualClock(), RecordingRunner()
    b = make(runner, clock, max_batch=4, delay_s=10.0)
    tasks = [asyncio.create_task(b.submit(i)) for i in range(5)]
    await settle()
    await until(lambda: len(runner.batches) == 1)
    assert runner.batches == [[0, 1, 2, 3]]  # full batch went at once; the clock never moved
    assert [t.done() for t in tasks] == [True] * 4 + [False]
    await clock.advance(10.0)  # the 5th waits for its own delay window
    await until(lambda: tasks[4].done())
    assert runner.batches[1] == [4]
    results = [t.result() for t in tasks]
    assert [r.value for r in results] == [0, 2, 4, 6, 8]
    assert [r.batch_size for r in results] == [4, 4, 4, 4, 1]
    await b.stop()


async def test_honours_the_queue_delay():
    clock, runner = ManualClock(), RecordingRunner()
    b = make(runner, clock, max_batch=8, delay_s=0.005)
    task = asyncio.create_task(b.submit(21))
    await settle()
    assert runner.batches == []
    await clock.advance(0.004)
    assert runner.batches == []
    second = asyncio.create_task(b.submit(1))  # joins the window of the first
    await settle()
    await clock.advance(0.0011)
    await until(lambda: task.done() and second.done())
    assert runner.batches == [[21, 1]]
    assert task.result().value == 42
    assert task.result().queue_s == pytest.approx(0.0051)
    await b.stop()


async def test_full_queue_refuses_immediately_with_retry_after():
    runner, b, first = await held_instance(queue=2)
    queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
    await settle()
    started = time.monotonic()
    with pytest.raises(QueueFull) as info:
        await b.submit(3)
    assert time.monotonic() - started < 0.05
    assert info.value.retry_after_s >= 1
    runner.release.set()
    assert [r.value for r in await asyncio.gather(first, *queued)] == [0, 2, 4]
    await b.stop()


async def test_deadline_expires_while_queued_and_is_never_computed():
    # batches of 1: the job is a full batch, handed to the busy instance, and waits on its thread
    clock, observer = ManualClock(), CountingObserver()
    runner, b, blocker = await held_instance(clock, observer=observer)
    late = asyncio.create_task(b.submit(7, deadline=clock.now() + 1.0))
    await settle()
    assert b.depth == 1
    await clock.advance(1.5)
    with pytest.raises(DeadlineExceeded):
        await late
    runner.release.set()
    await blocker
    await asyncio.sleep(0.05)
    assert [7] not in runner.batches  # dropped before compute
    assert observer.drops == ["cancelled"]  # it had its answer already
    assert b.depth == 0
    await b.stop()


async def test_failing_batch_fails_only_its_own_requests():
    runner = RecordingRunner(fail_on=13)
    b = make(runner, max_batch=2, delay_s=0.02)
    bad = await asyncio.gather(b.submit(13), b.submit(1), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in bad)
    good = await asyncio.gather(b.submit(2), b.submit(3))
    assert [r.value for r in good] == [4, 6]
    await b.stop()


async def test_cancelled_request_is_dropped_before_compute():
    runner, b, blocker = await held_instance()
    gone = asyncio.create_task(b.submit(99))
    await settle()
    gone.cancel()  # the client went away
    await settle()
    runner.release.set()
    await blocker
    kept = await b.submit(5)
    assert kept.value == 10
    assert all(99 not in batch for batch in runner.batches)
    await b.stop()


async def test_many_concurrent_clients_each_get_exactly_their_answer():
    runner = RecordingRunner()
    b = make(runner, max_batch=8, delay_s=0.002, queue=1000, runners=2)
    results = await asyncio.gather(*(b.submit(i) for i in range(400)))
    assert [r.value for r in results] == [2 * i for i in range(400)]
    computed = sorted(x for batch in runner.batches for x in batch)
    assert computed == list(range(400))  # each computed once
    assert max(len(batch) for batch in runner.batches) > 1
    await b.stop()


async def test_stop_drains_queued_requests_then_refuses_new_ones():
    runner = RecordingRunner()
    runner.release.clear()
    b = make(runner, max_batch=2, delay_s=0)
    tasks = [asyncio.create_task(b.submit(i)) for i in range(5)]
    await settle()
    stopping = asyncio.create_task(b.stop(drain_timeout_s=10))
    await settle()
    with pytest.raises(ModelNotReady):
        await b.submit(100)
    runner.release.set()
    await stopping
    assert [t.result().value for t in tasks] == [0, 2, 4, 6, 8]


async def test_a_full_batch_is_handed_to_a_busy_instance_and_starts_without_the_loop():
    runner, b, first = await held_instance(max_batch=2)
    rest = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
    await settle()
    assert b.depth == 2  # handed on, still waiting for compute
    runner.release.set()
    time.sleep(0.2)  # the event loop is blocked: only the instance's thread can start a batch
    assert runner.calls == 2
    assert [r.value for r in await asyncio.gather(first, *rest)] == [0, 2, 4]
    assert runner.batches == [[0], [1, 2]]
    await b.stop()


async def test_a_partial_batch_waits_for_the_instance():
    runner, b, first = await held_instance(max_batch=4)
    rest = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
    await settle()
    runner.release.set()
    time.sleep(0.2)
    assert runner.calls == 1  # not handed on: it may still grow while the instance is busy
    more = asyncio.create_task(b.submit(3))
    assert [r.value for r in await asyncio.gather(first, *rest, more)] == [0, 2, 4, 6]
    assert runner.batches[0] == [0]
    assert sorted(x for batch in runner.batches[1:] for x in batch) == [1, 2, 3]
    await b.stop()


async def test_a_drain_past_its_timeout_answers_the_batches_handed_out():
    runner, b, running = await held_instance()
    handed = asyncio.create_task(b.submit(1))
    await settle()
    await b.stop(drain_timeout_s=0.05)
    for task in (running, handed):
        with pytest.raises(ModelNotReady):
            await task
    runner.release.set()
