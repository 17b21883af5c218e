"""Several Knowlithic servers behind one TTS: the first fit one speaks, the others stand by.

Each server has its own :class:`SharedConnection` (one socket, its own dialer and backoff).
A reply is sent to the first server, in the order given, that is *fit*:

* it is not *resting*: a server that answered ``busy`` rests for a while (growing while it
  stays full) so that every new reply does not pay a refusal first;
* and, if it failed (a refused connection, a socket that died), it has since been reached
  again and its new socket has stayed up for a hold-down time, which doubles with each
  failure in a row (capped): a server that crash-loops, or flickers, is not handed replies
  only to drop them, and the pool does not flap between servers.

A failed server is dialled again in the background by its own dialer, so the preferred
server is used again as soon as it has proved itself, without a reply ever waiting on it.
When no server is fit, the pool waits for whichever one accepts first.

The pool only chooses; :mod:`.synthesis` moves a reply: it asks again for a connection when
its server died, drains or is full, and resumes there without losing or repeating a sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from livekit.agents import APIError

from .backoff import STABLE_AFTER, Backoff
from .errors import recontextualized
from .log import logger
from .shared_connection import Acquired, SharedConnection
from .transport import Transport

# a server that failed is trusted again once its new socket has been up RETURN_AFTER to twice
# that (jittered, so a fleet of agents does not return at once), doubled for every further
# failure in a row, up to RETURN_CAP
RETURN_AFTER = STABLE_AFTER
RETURN_CAP = 60.0
# a full server rests this long before new replies try it again (doubled while it stays full)
BUSY_REST = 2.0
BUSY_REST_CAP = 30.0
# a server that stayed fit this long has its failure count forgotten
FORGIVE_AFTER = 60.0


@dataclass
class _Server:
    """One server of the pool and what the pool remembers about it."""

    name: str  # its URL without a key: safe for logs
    connection: SharedConnection
    failed_at: float | None = None  # the last failure not yet made good
    hold: Backoff = field(default_factory=lambda: Backoff(base=2 * RETURN_AFTER, cap=RETURN_CAP))
    rest_until: float = 0.0
    rest: Backoff = field(default_factory=lambda: Backoff(base=BUSY_REST, cap=BUSY_REST_CAP))
    hold_down: float = 0.0  # for the current failure
    fit_since: float = 0.0

    def failed(self, now: float) -> None:
        if self.failed_at is None:
            if now - self.fit_since > FORGIVE_AFTER:
                self.hold.succeeded()
            self.hold.failed()
            self.hold_down = self.hold.next_delay()
        self.failed_at = now

    def full(self, now: float) -> None:
        if now - self.rest_until > FORGIVE_AFTER:
            self.rest.succeeded()
        self.rest.failed()
        self.rest_until = now + self.rest.next_delay()

    def fit(self, now: float) -> Transport | None:
        """Its open connection, if it may take a new reply now."""
        if now < self.rest_until:
            return None
        conn = self.connection.current
        if conn is None:
            return None
        if self.failed_at is not None:
            opened = now - conn.age
            if opened < self.failed_at or conn.age < self.hold_down:
                return None
            self.failed_at = None
            self.fit_since = now
        return conn


class ServerPool:
    """The TTS's servers in order of preference; hands out connections like one server."""

    def __init__(
        self,
        names: Sequence[str],
        make_connection: Callable[[int, Callable[[], None]], SharedConnection],
    ) -> None:
        """``make_connection(index, on_failure)`` builds the :class:`SharedConnection` of
        server ``index``, which calls ``on_failure`` for each failed attempt or drop."""
        if not names:
            raise ValueError("a server pool needs at least one server")
        self._servers = [
            _Server(name, make_connection(i, self._on_failure(i))) for i, name in enumerate(names)
        ]
        self._owner: weakref.WeakKeyDictionary[Transport, _Server] = weakref.WeakKeyDictionary()
        self._speaking: _Server = self._servers[0]

    @property
    def alternatives(self) -> bool:
        """Whether a reply can move to another server."""
        return len(self._servers) > 1

    @property
    def healthy(self) -> bool:
        return any(s.connection.healthy for s in self._servers)

    @property
    def current(self) -> Transport | None:
        """The open connection of the server speaking now (for metrics and tests)."""
        return self._speaking.connection.current

    def connection(self, index: int = 0) -> SharedConnection:
        """Server ``index``'s connection (the preferred one by default)."""
        return self._servers[index].connection

    def server_of(self, conn: Transport) -> str | None:
        """The name of the server ``conn`` leads to."""
        server = self._owner.get(conn)
        return server.name if server is not None else None

    def prewarm(self) -> None:
        """Open the preferred server's socket and the next one's: a reply that has to move
        then finds a warm socket, without a handshake (a TLS one costs round trips)."""
        for server in self._servers[:2]:
            server.connection.prewarm()

    async def acquire(self, timeout: float) -> Acquired:
        """A connection to the first fit server; else the first that accepts within
        ``timeout`` seconds (trying each once, then waiting for any)."""
        if not self.alternatives:
            return self._claim(self._servers[0], await self._servers[0].connection.acquire(timeout))
        started = time.perf_counter()
        now = time.monotonic()
        for server in self._servers:
            conn = server.fit(now)
            if conn is not None:
                return self._claim(server, Acquired(conn, True, time.perf_counter() - started))
        # none open and fit: dial, in order, those with nothing against them, once each
        deadline = now + timeout
        for server in self._servers:
            if server.failed_at is not None or now < server.rest_until:
                continue
            if server.connection.current is not None:
                continue  # open but held down: not yet
            try:
                acquired = await server.connection.acquire(
                    max(0.0, deadline - time.monotonic()), once=True
                )
            except APIError:
                continue  # its dialer told us (_on_failure); on to the next
            return self._claim(server, _since(acquired, started))
        return self._claim(*await self._first_to_accept(deadline, started))

    def busy(self, conn: Transport) -> None:
        """``conn``'s server refused a reply as full: new replies go elsewhere for a while."""
        server = self._owner.get(conn)
        if server is not None and self.alternatives:
            server.full(time.monotonic())
            logger.info("Knowlithic TTS server %s is full; resting it", server.name)

    def stalled(self, conn: Transport) -> None:
        """``conn``'s server owes a reply audio and has gone silent: it counts as failed, its
        socket is replaced, and it is dialled again in the background."""
        server = self._owner.get(conn)
        if server is not None and self.alternatives:
            logger.warning("Knowlithic TTS server %s stopped answering", server.name)
            server.failed(time.monotonic())
            self._replace(server, conn)

    def invalidate(self, conn: Transport | None = None) -> None:
        """As :meth:`SharedConnection.invalidate`, on ``conn``'s server (the speaking one
        without ``conn``).  A reply gives up a socket only when it closed on its own or its
        server said it shuts down: either counts against the server."""
        server = self._speaking if conn is None else self._owner.get(conn)
        if server is None:
            return
        if conn is not None and not conn.closed_by_client:
            server.failed(time.monotonic())
        self._replace(server, conn)

    async def aclose(self) -> None:
        for server in self._servers:
            await server.connection.aclose()

    # -- internals -----------------------------------------------------------------------------

    def _replace(self, server: _Server, conn: Transport | None) -> None:
        server.connection.invalidate(conn)
        if self.alternatives:
            # dial it again now, not when a reply needs it: it proves itself in the background
            server.connection.prewarm()

    def _on_failure(self, index: int) -> Callable[[], None]:
        def failed() -> None:
            self._servers[index].failed(time.monotonic())

        return failed

    def _claim(self, server: _Server, acquired: Acquired) -> Acquired:
        self._owner[acquired.connection] = server
        if server is not self._speaking:
            before, self._speaking = self._speaking, server
            order = self._servers.index(server)
            # moving down the list is a fault worth a warning; moving back up is good news
            log = logger.info if order < self._servers.index(before) else logger.warning
            log(
                "Knowlithic TTS: speaking through server %d of %d (%s) instead of %s",
                order + 1,
                len(self._servers),
                server.name,
                before.name,
            )
        return acquired

    async def _first_to_accept(self, deadline: float, started: float) -> tuple[_Server, Acquired]:
        """Wait on every server at once; the first connection wins."""
        left = max(0.0, deadline - time.monotonic())
        errors: list[tuple[_Server, APIError]] = []

        async def wait(server: _Server) -> tuple[_Server, Acquired]:
            try:
                return server, await server.connection.acquire(left)
            except APIError as e:
                errors.append((server, e))
                raise

        waits = [asyncio.ensure_future(wait(s)) for s in self._servers]
        try:
            for next_done in asyncio.as_completed(waits):
                with contextlib.suppress(APIError):
                    server, acquired = await next_done
                    return server, _since(acquired, started)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        raise _all_failed(errors)


def _since(acquired: Acquired, started: float) -> Acquired:
    return Acquired(acquired.connection, acquired.reused, time.perf_counter() - started)


def _all_failed(errors: list[tuple[_Server, APIError]]) -> APIError:
    first = errors[0][1]
    summary = "; ".join(f"{s.name}: {e.message}" for s, e in errors)
    return recontextualized(
        first,
        f"no Knowlithic TTS server could be reached ({summary})",
        retryable=any(e.retryable for _, e in errors),
    )
