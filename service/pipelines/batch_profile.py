"""``preferred_batch_size: auto``: the batch this host runs a model fastest at, measured at load.

An exported config cannot know the host it lands on: a 2-core CPU runs a small model fastest
per image at a batch of 1 to 4 and slower at 8 (docs/benchmarks.md), a GPU at the largest
batch it is given. So after warm-up every engine instance runs batches of 1, 2, 4, ... up to
``max_batch_size``, all instances at once as under load, for a short window each, twice over
(the better of the two counts), and the batcher closes its batches at the size that gave the
most images/s. A size within ``TIE`` of a smaller one counts as no faster (a smaller batch waits
less for company), and once a size falls below ``PAST_PEAK`` of the best, larger ones are not
timed: a model whose largest batch takes seconds does not run it for long at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

TIE = 0.03
PAST_PEAK = 0.85
WINDOW_S = 0.3  # per size, all instances together
MIN_CALLS = 2  # per instance and size, however long a call takes

BatchRun = Callable[[int, int], object]  # (instance, n): one batch of n on that instance


def candidate_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes = [1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size]
    return sizes + [max_batch_size]


def images_per_s(run: BatchRun, instances: int, n: int, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Batches of ``n`` on every instance at once, each in its own thread, until the window
    closes and each has run ``MIN_CALLS``: images over the wall time (blocking). Each instance's
    first batch of the size is not timed: a new input shape plans its memory first."""
    calls = [0] * instances
    started: list[float] = []
    untimed_done = threading.Barrier(instances, action=lambda: started.append(clock()))

    def loop(instance: int) -> None:
        run(instance, n)
        untimed_done.wait()
        while calls[instance] < MIN_CALLS or clock() - started[0] < window_s:
            run(instance, n)
            calls[instance] += 1

    threads = [threading.Thread(target=loop, args=(i,), name=f"batch-profile-{i}") for i in range(instances)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(calls) * n / max(clock() - started[0], 1e-9)


def fastest_batch_size(measure: Callable[[int], float], max_batch_size: int) -> tuple[int, dict[int, float]]:
    """The batch size to close batches at, and the images/s ``measure(n)`` gave for each size
    it timed (smallest first, stopping past the peak)."""
    sizes = candidate_sizes(max_batch_size)
    measured: dict[int, float] = {}
    if len(sizes) == 1:  # nothing to choose
        return sizes[0], measured
    for n in sizes:
        measured[n] = measure(n)
        if measured[n] < max(measured.values()) * PAST_PEAK:
            break
    for n in measured:  # a second pass, best of two: a short window is easily disturbed
        measured[n] = max(measured[n], measure(n))
    best = 0
    for n, rate in measured.items():
        if not best or rate > measured[best] * (1 + TIE):
            best = n
    return best, measured


async def measured_batch_size(name: str, run: BatchRun, instances: int, max_batch_size: int) -> int:
    """``fastest_batch_size`` of ``run`` off the event loop, logged with what it measured."""
    best, measured = await asyncio.to_thread(fastest_batch_size, lambda n: images_per_s(run, instances, n), max_batch_size)
    log.info("model %s: batches of %d (preferred_batch_size: auto; images/s by batch size here: %s)",
             name, best, ", ".join(f"{n}: {rate:.1f}" for n, rate in measured.items()) or "none to choose from")
    return best
