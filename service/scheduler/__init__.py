from segserve.scheduler.batcher import (
    BatchObserver,
    BatchPolicy,
    Completed,
    DynamicBatcher,
)
from segserve.scheduler.clock import Clock, MonotonicClock

__all__ = ["BatchObserver", "BatchPolicy", "Clock", "Completed", "DynamicBatcher", "MonotonicClock"]
