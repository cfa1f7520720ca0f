"""What a request may take of the server while it is in flight: its model's share (InFlight),
the server's decoded-pixel budget (PixelBudget), and its deadline at every stage."""

from __future__ import annotations

import threading
import time

from segserve.errors import DeadlineExceeded, QueueFull


def check_deadline(deadline: float, stage: str) -> None:
    if time.monotonic() >= deadline:
        raise DeadlineExceeded(f"the deadline passed before {stage}")


class PixelBudget:
    """The pixels of every image in flight in the server, as their headers declare them
    (``max_inflight_pixels``): reserved before decoding, released after encoding. Thread-safe:
    decoding runs on the codec pool."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()

    def reserve(self, pixels: int) -> None:
        with self._lock:
            if self.in_use + pixels > self.limit:
                raise QueueFull(
                    f"the server is decoding {self.in_use} pixels; {pixels} more would pass its limit of {self.limit}",
                    retry_after_s=1.0,
                )
            self.in_use += pixels

    def release(self, pixels: int) -> None:
        with self._lock:
            self.in_use -= pixels


class InFlight:
    """A model's in-flight budget: requests (and video chunks, by their frame window) from
    before their body is read to their answer -- queued, running, or being read, decoded or
    encoded -- so that overload is refused before any of that work is done, not after it."""

    def __init__(self, name: str, limit: int):
        self.name, self.limit = name, limit
        self.count = 0

    def admit(self, cost: int, retry_after_s: float) -> "Admission":
        """``cost`` of the budget until the Admission is released (or its ``with`` ends);
        QueueFull (503 + Retry-After) at once when it is spent."""
        if self.count + cost > self.limit:
            raise QueueFull(f"model {self.name} is at capacity ({self.limit} in flight)", retry_after_s=retry_after_s)
        self.count += cost
        return Admission(self, cost)


class Admission:
    """A request's share of its model's in-flight budget."""

    def __init__(self, budget: InFlight, cost: int):
        self._budget, self._cost = budget, cost

    def release(self) -> None:
        """Idempotent: the share goes back once."""
        self._budget.count -= self._cost
        self._cost = 0

    def __enter__(self) -> "Admission":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
