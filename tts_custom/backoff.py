"""Reconnect pacing: exponential backoff with jitter, sans-I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays before reconnect attempts: ``base * 2**(n-1)``, capped, then jittered.

    Jitter spreads the reconnects of many workers after a server restart, so they do not
    arrive as one storm.  ``failures`` counts the attempts that failed in a row.
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
