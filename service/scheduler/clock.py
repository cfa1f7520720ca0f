"""Time as the server sees it, injectable so tests can drive it by hand.

One abstraction for every "how long has it been / wait this long" in segserve: the batcher's
queue delays and deadlines today; stream idle times and the idle sweeper should take the same
``Clock`` (``now()`` is what a ``Callable[[], float]`` clock parameter wants: pass
``clock.now``). ``MonotonicClock`` is the real one, ``ManualClock`` the hand-driven one tests
use instead of real sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """Time moves only when ``advance`` says so; sleepers wake when it passes their time.

    ``advance`` then lets the event loop run a few rounds so that what the woken sleepers
    do next (start a batch, evict a stream) has happened when it returns. Work on other
    threads (an engine run) is not waited for.
    """

    def __init__(self, start: float = 1000.0, settle_rounds: int = 20):
        self.t = start
        self.settle_rounds = settle_rounds
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._ids), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        while self._sleepers and self._sleepers[0][0] <= self.t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        await self.settle()

    async def settle(self) -> None:
        """Let the event loop run ``settle_rounds`` rounds without moving time."""
        for _ in range(self.settle_rounds):
            await asyncio.sleep(0)
