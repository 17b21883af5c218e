"""The single persistent connection of a TTS instance.

One task, the dialer, opens it: a prewarm, the first request, a burst of streams after a
server restart and the reconnect after a drop all wait for the same attempt, so they open one
socket, not several, and the server is never hammered.  Attempts are paced by a backoff that
stays short while a reply waits (a restarted server is used as soon as it accepts) and grows
to several seconds while nobody does.  The socket is replaced before it reaches its maximum
age, while the old one finishes the requests it carries.

Whoever waits chooses how long (:meth:`SharedConnection.acquire`).  A server that has failed
for ``unhealthy_after`` seconds is down: a new wait then ends after the next attempt fails,
rather than holding a turn in silence for its whole time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from livekit.agents import APIError, APITimeoutError

from .backoff import STABLE_AFTER, Backoff, Outage
from .errors import recontextualized
from .log import logger
from .transport import Connect, Transport

# the longest pause between attempts while a reply waits for the server
WAITING_CAP = 1.0


@dataclass(frozen=True)
class Acquired:
    connection: Transport
    reused: bool
    acquire_time: float


class SharedConnection:
    def __init__(
        self,
        *,
        connect: Connect,
        connect_timeout: float,
        max_age: float,
        backoff: Backoff | None = None,
        outage: Outage | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self._connect = connect
        # told of every failed attempt and every drop the client did not ask for
        self._on_failure = on_failure
        self._connect_timeout = connect_timeout
        self._max_age = max_age
        self._backoff = backoff or Backoff()
        self._outage = outage or Outage()
        self._lock = asyncio.Lock()  # one connect at a time: the dialer's, or a refresh
        self._conn: Transport | None = None
        self._retired: set[Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dialer: asyncio.Task[None] | None = None
        self._waiting = 0  # acquire() calls waiting for the dialer
        self._wake = asyncio.Event()  # a waiter arrived: cut a long pause short
        self._attempted = asyncio.Event()  # replaced and set after every attempt
        self._last_error: APIError | None = None  # of the last attempt, None after a success
        self._last_attempt_end = 0.0
        self._pause = (0.0, 0.0)  # (alone, with someone waiting) after the last failure
        self._closed = False

    @property
    def healthy(self) -> bool:
        """False once the server has failed for ``unhealthy_after`` seconds without a break."""
        return self._outage.healthy(time.monotonic())

    @property
    def current(self) -> Transport | None:
        """The open connection, if there is one (for metrics and tests)."""
        conn = self._conn
        return conn if conn is not None and not conn.closed else None

    async def acquire(self, timeout: float, *, once: bool = False) -> Acquired:
        """The open connection, or the next one the dialer opens within ``timeout`` seconds.

        Raises the framework's API errors: the last attempt's error when time runs out (or
        at once if it was not retryable, or once the server is unhealthy, or with ``once``
        after the first attempt that fails: another server may be tried instead), with how
        long this call waited.
        """
        started = time.perf_counter()
        conn = self._usable()
        if conn is not None:
            return Acquired(conn, reused=True, acquire_time=time.perf_counter() - started)
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout):
                conn = await self._wait_for_connection(once)
        except TimeoutError:
            raise self._gave_up(time.perf_counter() - started) from None
        finally:
            self._waiting -= 1
        return Acquired(conn, reused=False, acquire_time=time.perf_counter() - started)

    def prewarm(self) -> None:
        """Open the connection in the background, so the first reply does not wait for it."""
        if self._usable() is None:
            self._dial_soon()

    def invalidate(self, conn: Transport | None = None) -> None:
        """Open a new connection for the next request; the old one closes once idle.

        With ``conn``, only if it is still the current one.
        """
        if self._conn is not None and (conn is None or conn is self._conn):
            self._retire(self._conn)
            self._conn = None

    async def aclose(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        self._finish_attempt()  # waiters wake and see the close
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for old in [conn, *self._retired]:
            if old is not None:
                await old.aclose()
        self._retired.clear()

    # -- waiting -------------------------------------------------------------------------------

    async def _wait_for_connection(self, once: bool) -> Transport:
        # every pass waits for an attempt that ends after this call began, so an unhealthy
        # server still gets one fresh attempt per wait: a server back up is used at once
        while True:
            if self._closed:
                raise APIError("the Knowlithic TTS was closed", retryable=False)
            attempted = self._attempted
            self._dial_soon()
            await attempted.wait()
            conn = self._usable()
            if conn is not None:
                return conn
            error = self._last_error
            if error is None:
                continue
            if once or not error.retryable:
                raise error
            now = time.monotonic()
            if not self._outage.healthy(now):
                # failing for a while now: a restart would be over; fail the turn quickly
                raise recontextualized(
                    error,
                    f"Knowlithic TTS has been unreachable for {self._outage.down_for(now):.0f} s "
                    f"({self._outage.failures} failed attempts); last: {error.message}",
                    retryable=False,
                )

    def _gave_up(self, waited: float) -> APIError:
        error = self._last_error
        if error is None:  # no attempt ended in time: the server hangs during the upgrade
            return APITimeoutError(
                f"timed out after {waited:.1f} s waiting for a Knowlithic TTS connection"
            )
        return recontextualized(
            error, f"{error.message} (waited {waited:.1f} s for the server to accept a connection)"
        )

    # -- dialing -------------------------------------------------------------------------------

    def _dial_soon(self) -> None:
        if self._closed:
            return
        if self._dialer is None or self._dialer.done():
            self._dialer = self._spawn(self._dial())
        else:
            self._wake.set()

    async def _dial(self) -> None:
        """Attempt until a connection is open, the TTS is closed, or an attempt is refused
        for good (a wrong key): the next request starts dialing again."""
        while not self._closed and self._usable() is None:
            await self._wait_for_turn()
            async with self._lock:
                if self._closed or self._usable() is not None:
                    break
                try:
                    await self._open_locked()
                except APIError as e:
                    self._record_failure(e)
                    if not e.retryable:
                        return
                    continue
                finally:
                    self._finish_attempt()
                return

    async def _wait_for_turn(self) -> None:
        """Sleep until the next attempt is due; shorter once someone is waiting."""
        while not self._closed:
            alone, waiting = self._pause
            due = self._last_attempt_end + (waiting if self._waiting else alone)
            delay = due - time.monotonic()
            if delay <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _open_locked(self) -> Transport:
        conn = await self._connect(self._connect_timeout)
        self._conn = conn
        self._last_error = None
        conn.on_first_answer = self._proved
        self._spawn(self._supervise(conn))
        return conn

    def _record_failure(self, error: APIError) -> None:
        now = time.monotonic()
        self._last_error = error
        self._last_attempt_end = now
        self._backoff.failed()
        self._pause = (self._backoff.next_delay(), self._backoff.next_delay(cap=WAITING_CAP))
        if self._on_failure is not None:
            self._on_failure()
        if self._outage.failed(now):
            logger.warning(
                "Knowlithic TTS has been unreachable for %.0f s (%d failed attempts): %s",
                self._outage.down_for(now),
                self._outage.failures,
                error.message,
            )
        else:
            logger.info("connecting to Knowlithic TTS failed: %s", error.message)

    def _finish_attempt(self) -> None:
        attempted, self._attempted = self._attempted, asyncio.Event()
        attempted.set()

    def _proved(self) -> None:
        self._backoff.succeeded()
        self._outage.succeeded()
        self._pause = (0.0, 0.0)

    # -- the open connection -------------------------------------------------------------------

    def _usable(self) -> Transport | None:
        conn = self._conn
        if conn is None:
            return None
        if conn.age >= STABLE_AFTER:
            self._proved()
        if conn.closed:
            self._dropped(conn)
            return None
        if conn.age >= self._max_age:
            self.invalidate()
            return None
        return conn

    async def _supervise(self, conn: Transport) -> None:
        """Count a socket that stays up as proof the server works; reopen it after an
        unexpected drop; replace it before it gets too old."""
        closed = asyncio.ensure_future(conn.wait_closed())
        try:
            # up for a while, used or not (a socket reopened while nobody speaks): healthy
            if not await _done_within(closed, min(STABLE_AFTER, self._max_age)):
                if conn is self._conn:
                    self._proved()
                if not await _done_within(closed, self._max_age - STABLE_AFTER):
                    await self._refresh(conn)
                    return
        finally:
            closed.cancel()
        self._dropped(conn)

    def _dropped(self, conn: Transport) -> None:
        """The current connection closed on its own: count it and dial again, once.

        Whoever notices first (a request on it, or its supervisor) does it, so a reply's next
        attempt is already paced by this failure.
        """
        if conn is not self._conn:
            return
        self._conn = None
        if not conn.closed_by_client:
            if not _proved(conn):
                # accepted, then dropped at once: as bad as a refusal (a crash loop, a bad key)
                self._record_failure(conn.lost_error())
            elif self._on_failure is not None:
                self._on_failure()
        self._dial_soon()  # so the next turn finds a warm socket

    async def _refresh(self, old: Transport) -> None:
        async with self._lock:
            if old is not self._conn or self._closed:
                return
            try:
                await self._open_locked()
            except APIError as e:
                # keep serving on the old socket; the next request reconnects if it dies
                logger.warning("could not refresh the Knowlithic TTS connection: %s", e)
                return
        self._retire(old)

    def _retire(self, conn: Transport) -> None:
        async def close_when_idle() -> None:
            await conn.wait_idle()
            await conn.aclose()
            self._retired.discard(conn)

        self._retired.add(conn)
        self._spawn(close_when_idle())

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _done_within(task: asyncio.Future[None], seconds: float) -> bool:
    done, _ = await asyncio.wait((task,), timeout=max(0.0, seconds))
    return bool(done)


def _proved(conn: Transport) -> bool:
    """The server answered on it, or it stayed up long enough: the server works."""
    return conn.answered > 0 or conn.age >= STABLE_AFTER
