"""The single persistent connection of a TTS instance.

One asyncio lock guards opening it, so a prewarm and the first request (or a burst of
streams after a server restart) open one socket, not several.  It is opened in the
background by :meth:`SharedConnection.prewarm`, reopened in the background with backoff
when the server drops it, and replaced before it reaches its maximum age, while the old
socket finishes the requests it carries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from livekit.agents import APIConnectionError, APIError, APITimeoutError

from .backoff import STABLE_AFTER, Backoff, Health
from .connection import Connection
from .log import logger

Connect = Callable[[float], Awaitable[Connection]]

# after a drop, how many times to reopen in the background before waiting for a request
_BACKGROUND_ATTEMPTS = 5


@dataclass(frozen=True)
class Acquired:
    connection: Connection
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
        health: Health | None = None,
    ) -> None:
        self._connect = connect
        self._connect_timeout = connect_timeout
        self._max_age = max_age
        self._backoff = backoff or Backoff()
        self._health = health or Health()
        self._lock = asyncio.Lock()
        self._conn: Connection | None = None
        self._retired: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._prewarm_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def healthy(self) -> bool:
        """False after several connections in a row failed or were closed at once."""
        return self._health.healthy

    @property
    def current(self) -> Connection | None:
        """The open connection, if there is one (for metrics and tests)."""
        conn = self._conn
        return conn if conn is not None and not conn.closed else None

    async def acquire(self, timeout: float) -> Acquired:
        """The open connection, or a new one; raises the framework's API errors."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    conn = self._usable()
                    reused = conn is not None
                    if conn is None:
                        conn = await self._open_locked(timeout)
        except TimeoutError:
            raise APITimeoutError(
                f"timed out after {timeout:g} s waiting for a Knowlithic TTS connection"
            ) from None
        return Acquired(conn, reused=reused, acquire_time=time.perf_counter() - started)

    def prewarm(self) -> None:
        """Open the connection in the background, so the first reply does not wait for it."""
        if self._closed or (self._prewarm_task is not None and not self._prewarm_task.done()):
            return
        self._prewarm_task = self._spawn(self._prewarm())

    def invalidate(self) -> None:
        """Open a new connection for the next request; the old one closes once idle."""
        if self._conn is not None:
            self._retire(self._conn)
            self._conn = None

    async def aclose(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for old in [conn, *self._retired]:
            if old is not None:
                await old.aclose()
        self._retired.clear()

    def _usable(self) -> Connection | None:
        conn = self._conn
        if conn is None:
            return None
        if conn.age >= STABLE_AFTER:
            self._proved()
        if conn.closed:
            self._conn = None
            return None
        if conn.age >= self._max_age:
            self.invalidate()
            return None
        return conn

    async def _open_locked(self, timeout: float, *, pace: bool = True) -> Connection:
        if self._closed:
            raise APIError("the Knowlithic TTS was closed", retryable=False)
        if wait := self._health.wait_left(time.monotonic()):
            # do not hammer a server that keeps failing: fail this turn fast instead
            raise APIConnectionError(
                f"Knowlithic TTS is unhealthy ({self._health.failures} connection failures in "
                f"a row); the next attempt is in {wait:.1f} s",
                retryable=False,
            )
        if pace:
            await self._pace()
        try:
            conn = await self._connect(timeout)
        except APIError:
            self._failed()
            raise
        self._conn = conn
        conn.on_first_answer = self._proved
        self._spawn(self._supervise(conn))
        return conn

    async def _prewarm(self) -> None:
        try:
            await self.acquire(self._connect_timeout)
        except APIError as e:
            logger.warning("could not prewarm the Knowlithic TTS connection: %s", e)

    async def _supervise(self, conn: Connection) -> None:
        """Reopen after an unexpected drop; replace the socket before it gets too old."""
        try:
            await asyncio.wait_for(conn.wait_closed(), timeout=self._max_age)
        except TimeoutError:
            await self._refresh(conn)
            return
        # still current: it was not replaced, so the server (or a cancel) dropped it
        if not conn.closed_by_client and not _proved(conn):
            self._failed()  # accepted, then dropped at once: as bad as a refusal
        if conn is self._conn and not self._closed:
            self._conn = None
            await self._reopen_in_background()

    async def _refresh(self, old: Connection) -> None:
        async with self._lock:
            if old is not self._conn or self._closed:
                return
            try:
                await self._open_locked(self._connect_timeout)
            except APIError as e:
                # keep serving on the old socket; the next request reconnects if it dies
                logger.warning("could not refresh the Knowlithic TTS connection: %s", e)
                return
        self._retire(old)

    async def _reopen_in_background(self) -> None:
        for _ in range(_BACKGROUND_ATTEMPTS):
            if not self._health.healthy:
                return  # the next request tries again once the cool-down has passed
            await self._pace()  # outside the lock: a request may connect meanwhile
            async with self._lock:
                if self._closed or self._usable() is not None:
                    return
                try:
                    await self._open_locked(self._connect_timeout, pace=False)
                    return
                except APIError as e:
                    logger.info("reconnecting to Knowlithic TTS failed: %s", e)

    def _proved(self) -> None:
        self._backoff.succeeded()
        self._health.succeeded()

    def _failed(self) -> None:
        self._backoff.failed()
        if self._health.failed(time.monotonic()):
            logger.warning(
                "Knowlithic TTS looks unhealthy: %d connection failures in a row; "
                "pausing reconnects for %.0f s",
                self._health.failures,
                self._health.wait_left(time.monotonic()),
            )

    async def _pace(self) -> None:
        if delay := self._backoff.next_delay():
            logger.debug("waiting %.2f s before reconnecting to Knowlithic TTS", delay)
            await asyncio.sleep(delay)

    def _retire(self, conn: Connection) -> None:
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


def _proved(conn: Connection) -> bool:
    """The server answered on it, or it stayed up long enough: the server works."""
    return conn.answered > 0 or conn.age >= STABLE_AFTER
