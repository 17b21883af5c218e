"""Reconnect pacing and the server's health, sans-I/O.

Two rules, both learned from servers that fail in a loop (pipecat #3711, #871):

* Reconnects back off exponentially, with jitter, so the workers of a fleet do not all come
  back at the same instant after a server restart.
* A connection that fails, or that the server closes before it ever proved itself (answered a
  request, or stayed up a few seconds), counts as a failure too: a server that accepts the
  handshake and closes at once (a refused key, a crash loop) is not "reconnected" forever.
  After a few such failures in a row the server is marked unhealthy, and no connection is
  attempted until a cool-down has passed; each failed retry doubles the cool-down.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# a connection the server answered on, or that stayed up this long, proved the server healthy
STABLE_AFTER = 5.0


@dataclass
class Backoff:
    """Delays before reconnect attempts: ``base * 2**(n-1)``, capped, then jittered.

    ``failures`` counts the failures in a row.
    """

    base: float = 0.2
    cap: float = 5.0
    failures: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; 0 after a success."""
        if self.failures == 0:
            return 0.0
        ceiling = min(self.cap, self.base * 2 ** (self.failures - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    def failed(self) -> None:
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0


@dataclass
class Health:
    """Trips after ``threshold`` failures in a row; then refuses attempts for a cool-down.

    Times are the caller's clock (``time.monotonic()``), so this holds no clock of its own.
    """

    threshold: int = 3
    cooldown: float = 10.0
    max_cooldown: float = 60.0
    failures: int = 0
    open_until: float = 0.0
    _trips: int = 0

    @property
    def healthy(self) -> bool:
        return self.failures < self.threshold

    def failed(self, now: float) -> bool:
        """Count a failure; True when it makes the server unhealthy (or keeps it so)."""
        self.failures += 1
        if self.failures < self.threshold:
            return False
        self.open_until = now + min(self.max_cooldown, self.cooldown * 2**self._trips)
        self._trips += 1
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self._trips = 0
        self.open_until = 0.0

    def wait_left(self, now: float) -> float:
        """Seconds before another attempt may be made (0: go ahead)."""
        return max(0.0, self.open_until - now) if not self.healthy else 0.0
