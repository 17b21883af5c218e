"""Server-wide admission: a hard cap on requests in flight, and a rate limit per client IP.

Both answer at once.  A full server says ``busy`` instead of queueing: a voice agent would
rather retry elsewhere (or later) than have its audio start seconds late.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Forget idle clients once this many are tracked; a full bucket carries no state worth keeping.
_MAX_TRACKED_CLIENTS: Final = 10_000


class Capacity:
    """Counts requests in flight on the whole server against a fixed limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError("capacity released more often than acquired")
        self.in_use -= 1


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per client key: ``rate`` tokens a second, at most ``burst`` saved up.

    ``rate`` 0 disables the limit.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        if self.rate <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_TRACKED_CLIENTS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0 if it has one)."""
        bucket = self._buckets.get(key)
        if self.rate <= 0 or bucket is None or bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= _MAX_TRACKED_CLIENTS:
            # Still full (a flood from many addresses): drop the longest-idle half.  They get a
            # fresh bucket if they return, which is lenient but keeps memory bounded.
            by_age = sorted(self._buckets.items(), key=lambda item: item[1].updated)
            for key, _ in by_age[: len(by_age) // 2]:
                del self._buckets[key]
