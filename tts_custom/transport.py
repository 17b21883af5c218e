"""What the plugin needs from a transport to a Knowlithic server, whatever carries it.

A :class:`Transport` is one open link to a server (a WebSocket, :mod:`.ws_transport`, or a
pool of kept-alive HTTP connections, :mod:`.http_transport`)
that opens requests and closes.  Each request is a :class:`Channel` that sends it, cancels it
and receives its messages, routed and ended by the protocol's rules, with
:class:`ConnectionLost` as the last event of every open request when the link dies.  The
synthesis (:mod:`.synthesis`) and the shared link (:mod:`.shared_connection`) use only these
two interfaces, so a second transport is one new module, chosen where the TTS connects
(``TTS._connect``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from livekit.agents import APIConnectionError, APITimeoutError

import knowlithic_protocol as protocol


@dataclass(frozen=True)
class ConnectionLost:
    """The link closed while the request was open."""

    close_code: int | None
    reason: str


RequestEvent: TypeAlias = protocol.ServerMessage | ConnectionLost


class Channel(Protocol):
    """The server's messages for one request, in the order they arrived."""

    request_id: str
    finished: bool  # its last event has arrived
    lost: bool  # ...and that was the loss of its link
    answered: asyncio.Event  # its first event (of any kind) has arrived

    @property
    def transport(self) -> Transport: ...

    async def send(self, msg: protocol.TextToSpeech) -> None:
        """Send the request; a failure arrives as this channel's ``ConnectionLost``."""
        ...

    async def receive(self, timeout: float) -> RequestEvent:
        """The next event; ``APITimeoutError`` if none comes within ``timeout`` seconds."""
        ...

    async def cancel(self) -> None:
        """Ask the server to stop the request if it still runs; drop whatever follows."""
        ...

    def close(self) -> None:
        """Stop taking events for the request (it ended, or is given up)."""
        ...


class Transport(Protocol):
    """One open link to a server, shared by many requests."""

    answered: int  # events the server sent for requests: proof that it works
    on_first_answer: Callable[[], None] | None

    @property
    def capabilities(self) -> protocol.Capabilities | None:
        """What the server said it offers (``None``: a server that does not say)."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def in_flight(self) -> int:
        """Requests open on it."""
        ...

    @property
    def closed_by_client(self) -> bool: ...

    @property
    def age(self) -> float:
        """Seconds since it opened."""
        ...

    @property
    def fault_began(self) -> float:
        """When it stopped serving: a silence with requests owed, or the moment it closed."""
        ...

    async def open_request(self, request_id: str) -> Channel:
        """Start routing ``request_id``'s events; before its request is sent."""
        ...

    def lost_error(self) -> APIConnectionError:
        """Why it closed, as the error a request on it gets."""
        ...

    async def wait_idle(self) -> None: ...

    async def wait_closed(self) -> None: ...

    async def aclose(self) -> None: ...


Connect: TypeAlias = Callable[[float], Awaitable[Transport]]  # the timeout in seconds


class ChannelEvents:
    """One request's events, in the order they arrived: the half of a :class:`Channel` that
    both transports share (each adds how it sends, cancels and closes)."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: asyncio.Queue[RequestEvent] = asyncio.Queue()
        self.finished = False  # its last event has arrived
        self.lost = False  # ...and that was the loss of its link
        self.answered = asyncio.Event()  # the first event (of any kind) has arrived
        self.closed = False  # given up: whatever still arrives for it is dropped

    def _deliver(self, event: RequestEvent) -> None:
        if self.closed or self.finished:
            return
        self.answered.set()
        if isinstance(event, protocol.Complete | protocol.Error | ConnectionLost):
            self.finished = True
            self.lost = isinstance(event, ConnectionLost)
        self._queue.put_nowait(event)

    async def receive(self, timeout: float) -> RequestEvent:
        """The next event; :class:`APITimeoutError` if none comes within ``timeout`` seconds."""
        if not self._queue.empty():  # the common case while audio streams: no timer needed
            return self._queue.get_nowait()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for wraps the wait in a new task,
            # an extra task and loop pass for every audio message
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            raise APITimeoutError(
                f"Knowlithic TTS sent nothing for request {self.request_id} in {timeout:g} s"
            ) from None
