"""Counters and timings kept inside actors, for the node's metrics.

Each actor owns its figures and is the only thread that changes them, so they need no
lock: the edge (the API's GET /metrics) asks the actor for a snapshot, which the actor
takes in its own thread. Observing a value is a bisect and three additions.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

# Seconds: from a cached signature check (microseconds) to a large block on a Pi (seconds).
SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Blocks disconnected by one reorganisation.
DEPTH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 1000)


class Histogram:
    """Counts of observations in buckets with upper bounds `bounds` (and one above them all)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = SECONDS_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """Count `n` observations of `value` (a batch of n items timed together counts each
        at the batch's mean)."""
        if n <= 0:
            return
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    @contextmanager
    def time(self, n: int = 1) -> Iterator[None]:
        """Observe the seconds the block takes, as `n` observations of its mean."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if n > 0:
                self.observe((time.perf_counter() - started) / n, n)

    def snapshot(self) -> dict:
        """{"bounds": upper bounds, "counts": per bucket (not cumulative, one more than
        bounds: the last is above every bound), "sum", "count"}; plain values, safe to hand
        to another thread."""
        return {"bounds": self.bounds, "counts": list(self.counts), "sum": self.sum, "count": self.count}
