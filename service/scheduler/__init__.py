from service.scheduler.batcher import BatchObserver, BatchPolicy, Completed, DynamicBatcher
from service.scheduler.clock import Clock, MonotonicClock

__all__ = ["BatchObserver", "BatchPolicy", "Clock", "Completed", "DynamicBatcher", "MonotonicClock"]
