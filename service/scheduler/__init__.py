from segserve.scheduler.batcher import (
    BatchObserver,
    BatchPolicy,
    Completed,
    DynamicBatcher,
)
from segserve.scheduler.clock import Clock, MonotonicClock
from segserve.scheduler.factory import Batcher, BatcherFactory, LocalBatchers

__all__ = ["BatchObserver", "BatchPolicy", "Batcher", "BatcherFactory", "Clock", "Completed", "DynamicBatcher",
           "LocalBatchers", "MonotonicClock"]
