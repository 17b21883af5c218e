"""Reconnect pacing, how long the server has been failing, and a reply's patience; sans-I/O.

Rules learned from servers that fail (pipecat #3711, #871) and from restarting one for real:

* Reconnects back off exponentially, with jitter, so the workers of a fleet do not all come
  back at the same instant after a server restart.  While a reply waits for the server the
  pause between attempts stays short (a restart takes 1-2 s, and the caller is waiting); with
  nobody waiting it grows to several seconds.
* A connection that fails, or that the server closes before it ever proved itself (answered a
  request, or stayed up a few seconds), counts as a failure too: a server that accepts the
  handshake and closes at once (a refused key, a crash loop) is not "reconnected" forever.
* The give-up policy counts time, not attempts: a burst of refusals in the first second of a
  restart says nothing, a server that has failed for ``unhealthy_after`` seconds is down.

Every time here is the caller's clock (``time.monotonic()``): nothing here reads a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from livekit.agents import APIError

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

    def next_delay(self, cap: float | None = None) -> float:
        """Seconds to wait before the next attempt; 0 after a success.

        ``cap`` lowers the ceiling for this delay only (someone is waiting for the answer).
        """
        if self.failures == 0:
            return 0.0
        ceiling = min(self.cap, self.base * 2 ** (self.failures - 1))
        if cap is not None:
            ceiling = min(ceiling, cap)
        return self._rng.uniform(ceiling / 2, ceiling)

    def failed(self) -> None:
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0


@dataclass
class Outage:
    """Since when the server has been failing; unhealthy once that lasts ``unhealthy_after``.

    Attempts fired in a burst count once in effect: only the time since the first failure
    after the last success matters.
    """

    unhealthy_after: float = 10.0
    since: float | None = None
    failures: int = 0
    _told: bool = False  # failed() already answered True for this outage

    def failed(self, now: float) -> bool:
        """Count a failure; True for the first one that finds the server unhealthy."""
        self.failures += 1
        if self.since is None:
            self.since = now
        if self._told or self.healthy(now):
            return False
        self._told = True
        return True

    def succeeded(self) -> None:
        self.since = None
        self.failures = 0
        self._told = False

    def healthy(self, now: float) -> bool:
        return self.since is None or now - self.since < self.unhealthy_after

    def down_for(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


@dataclass
class Patience:
    """How long one reply waits for a server that owes it something and fails to deliver.

    The wait counts from the moment the failed wait began (a connection attempt, a request
    the server stopped answering, a dropped socket) and is shared by everything that follows
    it: reconnects, requests sent again, and the framework's own retries, so a fault reaches
    the session ``seconds`` after it began, however many attempts fit in between.  Audio
    arriving again ends the fault; the next one gets the whole time again.
    """

    seconds: float
    since: float | None = None
    error: APIError | None = None  # the last error a wait ended with

    def fault(self, began: float) -> None:
        """A wait that began at ``began`` failed; a fault already running keeps its start."""
        if self.since is None:
            self.since = began

    def recovered(self) -> None:
        self.since = None

    def left(self, now: float) -> float:
        """Seconds the next wait may last."""
        if self.since is None:
            return self.seconds
        return max(0.0, self.since + self.seconds - now)

    def spent(self, now: float) -> bool:
        return self.since is not None and now >= self.since + self.seconds
