"""Server-wide admission: whole replies (streams), requests in flight, a rate per client IP.

All of it answers at once.  A full server says ``busy`` instead of queueing: a voice agent
would rather retry elsewhere (or later) than have its audio start seconds late.  Capacity is
decided per stream (one agent reply, all its sentence requests), not per request: a reply
that was admitted is never cut off halfway because other replies arrived.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Forget idle clients once this many are tracked; a full bucket carries no state worth keeping.
_MAX_TRACKED_CLIENTS: Final = 10_000


class Capacity:
    """Counts requests in flight on the whole server against a limit.

    The limit gates new streams only (:meth:`full`); a request of an admitted stream is
    counted with :meth:`acquire` even over it, so that its reply is not cut off.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    @property
    def full(self) -> bool:
        return self.in_use >= self.limit

    def try_acquire(self) -> bool:
        if self.full:
            return False
        self.in_use += 1
        return True

    def acquire(self) -> None:
        self.in_use += 1

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError("capacity released more often than acquired")
        self.in_use -= 1


# A stream is named by the client (its IP key) and the stream id it chose, so two clients that
# happen to pick the same id never share a reply; None is a request without a stream id.
StreamKey = tuple[str, str]


@dataclass
class _Stream:
    in_flight: int = 0
    idle_since: float = 0.0  # when its last request ended; meaningful while in_flight == 0
    over: bool = False  # a request was cancelled: the reply was interrupted
    # When the listener would finish the audio of the requests admitted so far (estimated):
    # the next request's audio is needed then, not at once.
    playout_end: float = 0.0


class Streams:
    """The replies the server is speaking: admitted whole, released after an idle window.

    A stream is active while it has requests in flight and for ``idle_window`` seconds after
    its last one ended: the next sentence of a reply may arrive a moment after the previous
    one was synthesized (the client sends it when its text is complete).  A request without a
    stream id is a stream of its own, released as soon as it ends.  A cancelled request means
    the reply was interrupted (a client cancels every open sentence of it at once), so its
    stream is released without the idle window.  A refused stream stays refused for the idle
    window too, so the sentences a client sent ahead of the refused first one are refused
    with it: a reply is admitted or refused as a whole.  ``limit`` 0 is no limit.  Idle and
    refused streams expire lazily, on the next look at the books.

    A place is *held* by a stream with a request in flight, or whose listener is still
    hearing the audio it was sent (estimated): that is a reply in progress.  An idle stream
    past that point costs nothing and holds nothing: when a new reply needs a place and every
    place is taken, the one that has been silent longest yields it (:meth:`make_room`).  If
    its next sentence comes after all, it is a new reply, admitted if there is room.  So a
    client cycling short replies through many stream ids cannot lock others out.
    """

    def __init__(
        self, limit: int, idle_window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.idle_window = idle_window
        self._clock = clock
        self._streams: dict[StreamKey, _Stream] = {}
        self._refused: dict[StreamKey, float] = {}  # when each was refused
        self._anonymous = 0  # requests in flight without a stream id

    @property
    def active(self) -> int:
        self._expire()
        return len(self._streams) + self._anonymous

    @property
    def held(self) -> int:
        """Places held: streams with requests in flight or audio still playing, see above."""
        self._expire()
        now = self._clock()
        return self._anonymous + sum(not self._yields(s, now) for s in self._streams.values())

    @property
    def full(self) -> bool:
        """Whether a new stream would be refused: every place is held."""
        return 0 < self.limit <= self.held

    def make_room(self) -> bool:
        """Free a place for a new stream if all are taken, from the longest-silent idle one.

        Call it when admitting a new stream (after checking :attr:`full`); True if a stream
        yielded its place.
        """
        if not 0 < self.limit <= self.active:
            return False
        now = self._clock()
        idle = [(k, s) for k, s in self._streams.items() if self._yields(s, now)]
        if not idle:
            return False
        key, _ = min(idle, key=lambda item: max(item[1].idle_since, item[1].playout_end))
        del self._streams[key]
        return True

    @staticmethod
    def _yields(stream: _Stream, now: float) -> bool:
        return stream.in_flight == 0 and stream.playout_end <= now

    def admitted(self, key: StreamKey | None) -> bool:
        """Whether ``key`` names a stream that is active now (so its requests need no room)."""
        self._expire()
        return key is not None and key in self._streams

    def in_flight(self, key: StreamKey | None) -> int:
        """Requests of the stream ``key`` in flight now (0 for no stream)."""
        stream = self._streams.get(key) if key is not None else None
        return stream.in_flight if stream is not None else 0

    def refused(self, key: StreamKey | None) -> bool:
        """Whether ``key`` names a stream refused within the idle window."""
        self._expire()
        return key is not None and key in self._refused

    def refuse(self, key: StreamKey | None) -> None:
        """Remember that the stream ``key`` was refused, so its later sentences are too."""
        if key is None or key in self._refused:
            return
        if len(self._refused) >= _MAX_TRACKED_CLIENTS:  # a flood: forget the oldest half
            for old in sorted(self._refused, key=self._refused.__getitem__)[
                : len(self._refused) // 2
            ]:
                del self._refused[old]
        self._refused[key] = self._clock()

    def begin(self, key: StreamKey | None, seconds: float) -> float:
        """A request of ``key`` with about ``seconds`` of audio starts; admits its stream.

        Returns how long from now until the listener needs the request's first audio: 0 for
        the first sentence of a reply, the audio still ahead of it for a later one, so the
        scheduler serves a new reply's first words before sentences that can wait.
        """
        if key is None:
            self._anonymous += 1
            return 0.0
        self._expire()
        now = self._clock()
        stream = self._streams.setdefault(key, _Stream(playout_end=now))
        stream.in_flight += 1
        stream.over = False
        start = max(now, stream.playout_end)
        stream.playout_end = start + seconds
        return start - now

    def end(
        self, key: StreamKey | None, *, cancelled: bool = False, misestimate: float = 0.0
    ) -> None:
        """A request of ``key`` ended; the stream idles once none is left in flight.

        ``misestimate`` is its real audio minus the seconds given to :meth:`begin`: later
        requests of the stream are placed after the real end.
        """
        if key is None:
            if self._anonymous <= 0:
                raise RuntimeError("stream ended more often than begun")
            self._anonymous -= 1
            return
        stream = self._streams.get(key)
        if stream is None or stream.in_flight <= 0:
            raise RuntimeError("stream ended more often than begun")
        stream.in_flight -= 1
        stream.over |= cancelled
        stream.playout_end += misestimate
        if stream.in_flight == 0:
            stream.idle_since = self._clock()
            if stream.over or self.idle_window <= 0:
                del self._streams[key]

    def _expire(self) -> None:
        deadline = self._clock() - self.idle_window
        for key, stream in list(self._streams.items()):
            if stream.in_flight == 0 and stream.idle_since <= deadline:
                del self._streams[key]
        for key, refused_at in list(self._refused.items()):
            if refused_at <= deadline:
                del self._refused[key]


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
