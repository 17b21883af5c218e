"""Admission by measured headroom: would a new reply get its first audio in time, and would
every reply already admitted stay ahead of its listener?

The synthesis pool is an earliest-deadline-first queue (:mod:`.scheduler`), so the question
can be answered by playing it forward: every segment the pool owes, in order of due time,
starts on the first worker free (and after its request's previous segment).  A new reply is
admitted if its first segment would finish by ``now + target`` and no segment due at or
after it (the only ones it can delay) would then finish late.

What it needs is measured, not configured:

* the cost of synthesis, in seconds of a worker per character (:func:`.text.cost`), an
  average over recent segments that rises quickly and falls slowly, so a burst counts within
  a few segments and a lull does not invite one;
* the event loop's lag (encoding and sending run there), measured by a ticker;
* the work owed: each admitted request's segments not yet synthesized, with their due times
  (when its listener runs out of audio).

A job counts as late only if it would also finish after the time it would take on a server
that owed nothing else: the target bounds the wait behind other work, so a server that owes
nothing admits a reply however slow its own synthesis is (refusing would not make it faster).

Before enough segments were measured (a cold start) the cost is at least a conservative
prior, measured at start-up (one segment alone, counted as if every worker were busy), so a
fresh server cannot admit a flood on a guess.  Every segment is counted as taking a ninth more
than measured: headroom for sentences of admitted replies that have not arrived yet, and for
the other work on the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

# Seconds of a worker per character before anything was measured (a server started without
# its start-up measurement, :meth:`Headroom.calibrate`): about what two busy workers measured
# on a loaded 2-core machine.  Until _WARM_SAMPLES segments were measured the estimate never
# goes below the prior, so a cold server errs on refusing.
COLD_SECONDS_PER_CHARACTER: Final = 0.01
_WARM_SAMPLES: Final = 20
# Per segment: a rise in cost counts at once, a fall slowly (no oscillation after a burst).
_RISE: Final = 0.3
_FALL: Final = 0.05
# The share of the workers' time admission counts on (see the module docstring): each segment
# is counted as taking 1 / _POOL_SHARE of its measured cost.
_POOL_SHARE: Final = 0.9
_EPSILON: Final = 1e-9  # rounding, when the sums are exactly on time
_TICK: Final = 0.05  # seconds between two looks at the event loop
_UTILIZATION_WINDOW: Final = 5.0  # seconds the utilization is averaged over


@dataclass(eq=False)
class Pending:
    """One admitted request's segments not yet synthesized, and when each is due.

    ``next_due`` is when its listener needs the next segment's first audio; each later one is
    due after the (estimated) audio of those before it.
    """

    costs: list[int]
    audio: list[float]  # estimated seconds of audio of each segment
    next_due: float
    started: float | None = None  # when the segment at the front began synthesis

    def jobs(self, now: float, seconds_per_character: float) -> Iterator[tuple[float, float]]:
        """(due, worker seconds still needed) of each segment left."""
        due = self.next_due
        for index, (chars, audio) in enumerate(zip(self.costs, self.audio, strict=True)):
            work = chars * seconds_per_character
            if index == 0 and self.started is not None:
                work = max(0.0, work - (now - self.started))
            yield due, work
            due += audio

    def begin_segment(self, now: float) -> None:
        self.started = now

    def end_segment(self, next_due: float) -> None:
        """The front segment is synthesized; the next one is due at ``next_due``."""
        if self.costs:
            del self.costs[0], self.audio[0]
        self.started = None
        self.next_due = next_due


@dataclass(frozen=True)
class Forecast:
    """What admitting a reply would do."""

    first_audio: float  # seconds from now to its first segment synthesized, and sent
    admits: bool  # that is within the target and nothing admitted would end up late


@dataclass
class Headroom:
    """The predictor: measurements, the work owed, and the admission test."""

    workers: int
    target: float  # seconds; 0 disables admission by headroom (the hard caps remain)
    clock: Callable[[], float] = time.monotonic
    seconds_per_character: float = COLD_SECONDS_PER_CHARACTER
    prior: float = COLD_SECONDS_PER_CHARACTER  # the floor while cold
    samples: int = 0
    lag: float = 0.0
    utilization: float = 0.0
    pending: set[Pending] = field(default_factory=set)

    @property
    def enabled(self) -> bool:
        return self.target > 0

    @property
    def cost(self) -> float:
        """Seconds of a worker per character, as admission counts it."""
        if self.samples < _WARM_SAMPLES:
            return max(self.seconds_per_character, self.prior)
        return self.seconds_per_character

    def calibrate(self, characters: int, seconds: float) -> None:
        """The prior from one segment synthesized alone at start-up.

        With every worker busy, each segment shares the cores with the others: counted as
        ``workers`` times slower, which errs on refusing until real segments are measured.
        """
        if characters > 0 and seconds > 0:
            self.prior = self.seconds_per_character = seconds / characters * self.workers

    # -- measurements ----------------------------------------------------------------------

    def observe_synthesis(self, characters: int, seconds: float) -> None:
        """A segment of ``characters`` took ``seconds`` of a worker (wall time, in its thread)."""
        if characters <= 0 or not seconds >= 0:
            return
        sample = seconds / characters
        if self.samples == 0:
            self.seconds_per_character = sample
        else:
            weight = _RISE if sample > self.seconds_per_character else _FALL
            self.seconds_per_character += weight * (sample - self.seconds_per_character)
        self.samples += 1

    def observe_lag(self, lag: float) -> None:
        weight = _RISE if lag > self.lag else _FALL
        self.lag += weight * (max(0.0, lag) - self.lag)

    def observe_utilization(self, busy: float, elapsed: float) -> None:
        """``busy`` worker seconds were used in the last ``elapsed`` seconds."""
        if elapsed <= 0:
            return
        share = min(1.0, busy / (elapsed * self.workers))
        weight = min(1.0, elapsed / _UTILIZATION_WINDOW)
        self.utilization += weight * (share - self.utilization)

    # -- the work owed ---------------------------------------------------------------------

    def add(self, pending: Pending) -> None:
        self.pending.add(pending)

    def remove(self, pending: Pending) -> None:
        self.pending.discard(pending)

    # -- the test --------------------------------------------------------------------------

    def forecast(self, costs: Sequence[int], audio: Sequence[float]) -> Forecast:
        """Admitting a reply whose first request has segments of ``costs`` characters.

        The pool is played forward: segments being synthesized keep their workers, then each
        owed segment, in order of due time, starts on the first free worker once its
        request's previous segment is done.  A segment is late if it finishes after its due
        time and after the time it would finish on a server that owed nothing else: the
        target bounds the wait behind other work, not the server's own speed (refusing a
        reply would not make it faster).
        """
        now = self.clock()
        rate = self.cost
        new = Pending(list(costs), list(audio), now + self.target)
        owed = []
        for index, item in enumerate([*self.pending, new]):
            own = self.lag  # a request's segments are synthesized one after the other
            for position, (due, measured) in enumerate(item.jobs(now, rate)):
                work = measured / _POOL_SHARE
                own += work
                running = position == 0 and item.started is not None
                owed.append((not running, due, index, work, own, item is new))
        owed.sort()
        free = [self.lag] * self.workers  # when each worker is next free, from now
        done_at: dict[int, float] = {}  # when each request's last segment so far finishes
        first_audio: float | None = None
        late = False
        for _, due, index, work, own, is_new in owed:
            start = max(heapq.heappop(free), done_at.get(index, 0.0))
            finish = done_at[index] = start + work
            heapq.heappush(free, finish)
            if is_new and first_audio is None:
                first_audio = finish
            if first_audio is not None and finish > max(due - now, own) + _EPSILON:
                late = True  # the new reply is late, or makes a job due after it late
        first = first_audio if first_audio is not None else self.lag
        return Forecast(first, admits=not late)

    def ready_for(self, characters: int) -> bool:
        """Whether a new reply whose first segment has ``characters`` would be admitted."""
        return not self.enabled or self.forecast([characters], [0.0]).admits

    # -- the ticker ------------------------------------------------------------------------

    async def watch(self, busy_seconds: Callable[[], float]) -> None:
        """Measure the event loop's lag and the workers' utilization until cancelled."""
        loop = asyncio.get_running_loop()
        last, busy = loop.time(), busy_seconds()
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                expected = loop.time() + _TICK
                await asyncio.sleep(_TICK)
                now = loop.time()
                self.observe_lag(now - expected)
                total = busy_seconds()
                self.observe_utilization(total - busy, now - last)
                last, busy = now, total
