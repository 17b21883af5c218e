"""The WebSocket transport: one socket to a Knowlithic TTS server, shared by every request.

A :class:`WebSocketTransport` (a :class:`~.transport.Transport`) owns the socket's receive
loop and hands each server message to the :class:`WebSocketChannel` of its request.  Which
request that is, and when a request is over, is the protocol's
:class:`~knowlithic_protocol.client.ClientProtocol` to say: this module only moves frames and
events.  When the socket dies, every open request learns it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
from livekit.agents import APIConnectionError, APIStatusError, APITimeoutError

import knowlithic_protocol as protocol
from knowlithic_protocol.client import ClientProtocol, ConnectionMessage, Ignored

from .errors import connection_lost_error, handshake_error, redact_url
from .log import logger
from .transport import ChannelEvents, ConnectionLost

# a peer that never answers our close frame must not hold the worker (aiohttp waits 10 s)
CLOSE_TIMEOUT: Final = 2.0
MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024


class WebSocketChannel(ChannelEvents):
    """The server's messages for one request, in the order they arrived."""

    def __init__(self, connection: WebSocketTransport, request_id: str) -> None:
        super().__init__(request_id)
        self._connection = connection
        self._slot = False  # holds one of the connection's request slots

    @property
    def transport(self) -> WebSocketTransport:
        return self._connection

    def close(self) -> None:
        """Stop routing messages here; later ones for this request are dropped."""
        self.closed = True
        self._connection._unroute(self)

    async def send(self, msg: protocol.TextToSpeech) -> None:
        await self._connection.send_request(self, msg)

    async def cancel(self) -> None:
        """Ask the server to stop this request if it is still running; drop what follows."""
        await self._connection.cancel(self)


class WebSocketTransport:
    """A connected socket, its receive loop, and the requests it carries."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        *,
        capabilities: protocol.Capabilities | None,
    ) -> None:
        self._ws = ws
        self._protocol = ClientProtocol(tagged=ws.protocol == protocol.SUBPROTOCOL)
        self._protocol.capabilities = capabilities
        self.connected_at = time.monotonic()
        self._routes: dict[str, WebSocketChannel] = {}
        self._send_lock = asyncio.Lock()
        self._lost: ConnectionLost | None = None
        self._closing = False
        self.answered = 0  # messages the server sent for requests: proof that it works
        self.on_first_answer: Callable[[], None] | None = None
        # the server's own limit of requests in flight on one connection: a request over it
        # waits for a slot here rather than being refused (too_many_requests)
        limit = capabilities.max_requests_in_flight if capabilities is not None else None
        self._slots = asyncio.Semaphore(limit) if limit else None
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle = asyncio.Event()
        self._idle.set()
        # since when requests have been open with nothing heard from the server (None: none
        # open, or it just spoke): where a stall began, if the socket then dies
        self._owed_since: float | None = None
        self._lost_at = 0.0
        self._recv_task = asyncio.create_task(self._recv_loop(), name="knowlithic.recv")

    @property
    def capabilities(self) -> protocol.Capabilities | None:
        return self._protocol.capabilities

    @property
    def closed(self) -> bool:
        return self._lost is not None or self._ws.closed

    @property
    def age(self) -> float:
        return time.monotonic() - self.connected_at

    @property
    def in_flight(self) -> int:
        return len(self._routes)

    async def open_request(self, request_id: str) -> WebSocketChannel:
        """Start routing ``request_id``'s messages; call before sending the request.

        Waits for one of the server's request slots: that is queueing behind our own
        requests, not a fault of the server, so it has no timeout of its own (each request
        holding a slot ends, at the latest, when its own wait for the server times out).
        """
        self._raise_if_lost()
        holds_slot = self._slots is not None and await self._acquire_slot()
        channel = WebSocketChannel(self, request_id)
        channel._slot = holds_slot
        if not self._routes:
            self._owed_since = time.monotonic()
        self._protocol.open_request(request_id)
        self._routes[request_id] = channel
        self._idle.clear()
        return channel

    def _raise_if_lost(self) -> None:
        if self._lost is not None:
            raise connection_lost_error(self._lost.close_code, self._lost.reason)

    async def _acquire_slot(self) -> bool:
        """One request slot; the loss of the socket ends the wait at once."""
        assert self._slots is not None
        if not self._slots.locked():  # the common case: a slot is free, no task needed
            await self._slots.acquire()
            return True
        acquiring = asyncio.ensure_future(self._slots.acquire())
        try:
            await asyncio.wait((acquiring, self._gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not acquiring.done():
                acquiring.cancel()
        if acquiring.done() and not acquiring.cancelled() and self._lost is not None:
            self._slots.release()
        self._raise_if_lost()
        return True

    async def send(self, msg: protocol.ClientMessage) -> None:
        self._raise_if_lost()
        frame = self._protocol.send(msg)
        try:
            async with self._send_lock:
                await self._ws.send_str(frame)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as e:
            # RuntimeError: aiohttp refuses to write to a socket that is closing
            raise APIConnectionError(f"Knowlithic TTS connection failed while sending: {e}") from e

    async def send_request(self, channel: WebSocketChannel, msg: protocol.TextToSpeech) -> None:
        """Send ``channel``'s request.  A socket that fails on the way is reported on the
        channel as its loss, so its reader asks again as for any lost socket."""
        try:
            await self.send(msg)
        except APIConnectionError as e:
            if not channel.finished:
                channel._deliver(ConnectionLost(close_code=None, reason=str(e)))

    async def cancel(self, channel: WebSocketChannel) -> None:
        """Ask the server to stop an unfinished request and drop whatever it still sends."""
        channel.close()
        if channel.finished or self.closed:
            return
        if self._protocol.untagged_peer:
            # its late audio would carry no id and land in the next request: drop the socket
            logger.debug("closing a connection whose server does not tag audio, to cancel")
            await self.aclose()
            return
        with contextlib.suppress(APIConnectionError):  # if the socket is gone, so is the request
            await self.send(protocol.Cancel(request_id=channel.request_id))

    def lost_error(self) -> APIConnectionError:
        """Why the socket closed, as the error a request on it gets."""
        lost = self._lost or ConnectionLost(self._ws.close_code, "connection closed")
        return connection_lost_error(lost.close_code, lost.reason)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    @property
    def closed_by_client(self) -> bool:
        return self._closing

    async def wait_closed(self) -> None:
        """Return once the socket is gone, for whatever reason."""
        await asyncio.wait([self._recv_task])  # unlike awaiting it, survives its cancellation

    async def aclose(self) -> None:
        self._closing = True
        self._fail_all(ConnectionLost(close_code=None, reason="closed by the client"))
        try:
            await self._ws.close()
        finally:
            await _cancel_and_wait(self._recv_task)

    def _unroute(self, channel: WebSocketChannel) -> None:
        if channel._slot and self._slots is not None:
            channel._slot = False
            self._slots.release()
        if self._routes.get(channel.request_id) is channel:
            del self._routes[channel.request_id]
            self._protocol.close_request(channel.request_id)
        if not self._routes:
            self._idle.set()
            self._owed_since = None

    async def _recv_loop(self) -> None:
        lost = ConnectionLost(close_code=None, reason="connection closed")
        try:
            while True:
                msg = await self._ws.receive()
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._dispatch(msg.data)
                    continue
                if msg.type == aiohttp.WSMsgType.ERROR:
                    lost = ConnectionLost(
                        close_code=self._ws.close_code, reason=f"socket error: {msg.data!r}"
                    )
                else:  # CLOSE, CLOSING, CLOSED
                    lost = ConnectionLost(
                        close_code=self._ws.close_code or _as_int(msg.data),
                        reason=str(msg.extra or "closed by the server"),
                    )
                break
        except Exception as e:  # a receive loop must never die silently
            lost = ConnectionLost(close_code=None, reason=f"receive failed: {e!r}")
        if not self._closing:
            logger.warning(
                "Knowlithic TTS connection lost",
                extra={"close_code": lost.close_code, "in_flight": len(self._routes)},
            )
        self._fail_all(lost)
        if not self._ws.closed:
            await self._ws.close()

    @property
    def fault_began(self) -> float:
        """When this socket stopped serving: the start of a silence with requests owed, or
        the moment it was lost."""
        if self._owed_since is not None:
            return min(self._owed_since, self._lost_at or time.monotonic())
        return self._lost_at or time.monotonic()

    def _dispatch(self, frame: str | bytes) -> None:
        if self._owed_since is not None:
            self._owed_since = time.monotonic()
        event = self._protocol.receive(frame)
        if isinstance(event, Ignored):
            if event.reason == "malformed":
                logger.warning(
                    "ignoring a malformed Knowlithic TTS message: %s",
                    event.detail,
                    extra={"request_id": event.request_id},
                )
            else:
                logger.debug(
                    "ignoring a Knowlithic TTS message (%s: %s)",
                    event.reason,
                    event.detail,
                    extra={"request_id": event.request_id},
                )
            return
        if isinstance(event, ConnectionMessage):
            if isinstance(event.message, protocol.Error):
                msg = event.message
                logger.warning("Knowlithic TTS reported an error: %s (%s)", msg.message, msg.code)
            return
        channel = self._routes[event.request_id]
        channel._deliver(event.message)
        self.answered += 1
        if self.answered == 1 and self.on_first_answer is not None:
            self.on_first_answer()
        if event.final:
            self._unroute(channel)

    def _fail_all(self, lost: ConnectionLost) -> None:
        if self._lost is None:
            self._lost = lost
            self._lost_at = time.monotonic()
        if not self._gone.done():
            self._gone.set_result(None)
        for channel in list(self._routes.values()):
            if not channel.finished:
                channel._deliver(lost)


async def connect(
    session: aiohttp.ClientSession,
    url: str,
    *,
    api_key: str | None,
    timeout: float,
    heartbeat: float | None,
) -> WebSocketTransport:
    """Open a connection, mapping every failure to the framework's API errors.

    The API key travels in a header only; it never appears in a URL, a log or an error.
    """
    headers: Mapping[str, str] = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with asyncio.timeout(timeout):
            ws = await session.ws_connect(
                url,
                headers=headers,
                protocols=(protocol.SUBPROTOCOL,),
                heartbeat=heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
                max_msg_size=MAX_MESSAGE_SIZE,
            )
            capabilities = None
            if ws.protocol == protocol.SUBPROTOCOL:
                try:
                    capabilities = await _read_capabilities(ws)
                except BaseException:
                    # upgraded, then silent (or cancelled): the socket is ours to close
                    _abort(ws)
                    raise
    except TimeoutError:
        raise APITimeoutError(
            f"timed out after {timeout:g} s connecting to Knowlithic TTS at {redact_url(url)}"
        ) from None
    except aiohttp.WSServerHandshakeError as e:
        raise handshake_error(url, e.status) from None
    except (aiohttp.ClientError, OSError) as e:
        raise APIConnectionError(
            f"cannot connect to Knowlithic TTS at {redact_url(url)}: {type(e).__name__}"
        ) from None
    return WebSocketTransport(ws, capabilities=capabilities)


async def _read_capabilities(ws: aiohttp.ClientWebSocketResponse) -> protocol.Capabilities:
    msg = await ws.receive()
    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        try:
            decoded = protocol.decode_server_message(msg.data, tagged_binary=True)
        except protocol.ProtocolError as e:
            decoded = protocol.error("bad_capabilities", str(e))
        if isinstance(decoded, protocol.Capabilities):
            return decoded
        if isinstance(decoded, protocol.Error):
            await ws.close()
            raise APIStatusError(
                f"Knowlithic TTS refused the connection: {decoded.message}",
                status_code=503 if decoded.retryable else 400,
                retryable=decoded.retryable,
            )
    await ws.close()
    raise APIConnectionError(
        "Knowlithic TTS agreed to knowlithic.v1 but did not send its capabilities first"
    )


def _abort(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the socket at once, synchronously (we may be cancelled): a peer that sent
    nothing will not answer a close frame.  aiohttp has no public abort for a client
    WebSocket; closing its response closes the connection, as aiohttp does on errors."""
    ws._response.close()


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) else None


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    if task.done() or task is asyncio.current_task():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if (current := asyncio.current_task()) is not None and current.cancelling():
            raise
