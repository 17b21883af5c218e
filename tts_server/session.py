"""One WebSocket connection: it moves messages between the socket and its requests.

What a request gets is decided elsewhere: :mod:`.verdict` admits or refuses it, and
:mod:`.rendering` turns it into the messages that carry its audio.  Every accepted request
runs as its own task, so several can be in flight on one connection; each task sends its own
messages in order.  Every request ends with exactly one terminal message: ``Complete``,
``Complete(cancelled=True)`` after a ``Cancel``, or ``Error``; a request refused at admission
gets only its ``Error``.  :class:`knowlithic_protocol.server.ServerProtocol`, through which
every frame goes, keeps those rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import WSCloseCode, WSMsgType, web

import knowlithic_protocol as protocol
from knowlithic_protocol.server import Invalid, ServerProtocol

from .rendering import Rendering
from .state import ServerState
from .verdict import NothingToSay, Refuse, judge

_LOG = logging.getLogger("tts_server.session")

# How long ending the last requests and the closing handshake may take at shutdown.
_CLOSE_TIMEOUT: Final = 3.0

StopReason = Literal["cancel", "shutdown", "closed"]


@dataclass
class _Request:
    msg: protocol.TextToSpeech
    rendering: Rendering
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    # A task cancelled before its first step never runs its try/finally, so a request whose
    # task has not started is stopped by its stop_reason alone (checked on entry).
    started: bool = False

    def stop(self, reason: StopReason) -> bool:
        """Ask the request to stop; False if it is already stopping."""
        if self.stop_reason is not None or self.task is None:
            return False
        self.stop_reason = reason
        if self.started:
            self.task.cancel()
        return True


class _ConnectionGone(Exception):
    """The socket closed under a send: nobody is left to tell anything."""


def _short(value: str, limit: int = 40) -> str:
    """A client-chosen string made safe for a log line (bounded, no control characters)."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


class Session:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        state: ServerState,
        *,
        client: str,
        binary_audio: bool,
        abort: Callable[[], None],
    ) -> None:
        self.ws = ws
        self._abort = abort
        self.state = state
        self.client = client
        self._requests: dict[str, _Request] = {}
        self._protocol = ServerProtocol(binary_audio=binary_audio)
        self._send_lock = asyncio.Lock()
        self._gone = False  # dropped for not reading: nothing more is sent

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    # -- connection ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes."""
        try:
            if self._protocol.binary_audio:
                await self._send(self.state.capabilities())
            async for message in self.ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_frame(message.data)
                elif message.type == WSMsgType.ERROR:
                    _LOG.info("connection from %s failed: %s", self.client, self.ws.exception())
                    break
        except _ConnectionGone:
            pass
        finally:
            await self._stop_all("closed")

    async def shutdown(self, grace: float) -> None:
        """Let requests run for up to ``grace`` seconds, end the rest, close with 1001."""
        tasks = [r.task for r in self._requests.values() if r.task is not None]
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        try:
            # A client that stopped reading would block the last messages and the close.
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._stop_all("shutdown")
                await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        except TimeoutError:
            _LOG.info("connection from %s did not close in time; dropping it", self.client)
            self._abort()

    async def _stop_all(self, reason: StopReason) -> None:
        tasks = [
            r.task for r in list(self._requests.values()) if r.stop(reason) and r.task is not None
        ]
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- incoming ------------------------------------------------------------------------------

    async def _on_frame(self, frame: str | bytes) -> None:
        try:
            await self._handle(frame)
        except _ConnectionGone:
            raise
        except Exception:
            # A bug must cost this message, never the connection and its other replies.
            _LOG.exception("could not handle a message from %s", self.client)
            await self._send_error(protocol.ERR_INTERNAL, "the server failed on this message", None)

    async def _handle(self, frame: str | bytes) -> None:
        msg = self._protocol.receive(frame)
        if isinstance(msg, Invalid):
            await self._send_error(msg.error.code, str(msg.error), msg.error.request_id)
            return
        if isinstance(msg, protocol.Cancel):
            self._cancel(msg.request_id)
        elif isinstance(msg, protocol.TextToSpeech):
            await self._admit(msg)
        # Keepalive: receiving it was the point.

    def _cancel(self, request_id: str) -> None:
        request = self._requests.get(request_id)
        if request is None or not request.stop("cancel"):
            # Already ended (its terminal message is sent or on its way): nothing to do.
            _LOG.debug("cancel for request %s, which is not in flight", _short(request_id))

    async def _admit(self, msg: protocol.TextToSpeech) -> None:
        rid, state = msg.request_id, self.state
        verdict = judge(
            state,
            msg,
            client=self.client,
            in_flight=len(self._requests),
            duplicate=self._protocol.is_in_flight(rid),
        )
        if isinstance(verdict, Refuse):
            _LOG.debug("refused request %s from %s: %s", _short(rid), self.client, verdict.code)
            await self._send_error(verdict.code, verdict.message, rid)
            return
        if isinstance(verdict, NothingToSay):
            state.metrics.requests.labels("complete").inc()
            self._protocol.start(rid)
            await self._send(protocol.Complete(rid))
            return
        rendering = Rendering.admitted(msg, verdict, state)
        request = _Request(msg, rendering)
        self._requests[rid] = request
        self._protocol.start(rid)
        request.task = asyncio.create_task(self._serve(request), name=f"tts-request-{rid[:40]}")

    # -- one request ---------------------------------------------------------------------------

    async def _serve(self, request: _Request) -> None:
        rid = request.msg.request_id
        terminal: protocol.ServerMessage | None = None
        outcome = "complete"
        request.started = True
        try:
            if request.stop_reason is not None:  # stopped before it started
                raise asyncio.CancelledError
            await self._stream(request)
            terminal = protocol.Complete(rid)
        except asyncio.CancelledError:
            if request.stop_reason == "cancel":
                terminal, outcome = protocol.Complete(rid, cancelled=True), "cancelled"
            elif request.stop_reason == "shutdown":
                outcome = "error"
                terminal = protocol.error(
                    protocol.ERR_SHUTTING_DOWN,
                    "the server shut down before the request finished",
                    request_id=rid,
                )
            else:  # the connection is gone, or the server is being torn down
                outcome = "closed"
                raise
        except _ConnectionGone:
            outcome = "closed"
        except Exception:
            _LOG.exception("request %s failed", _short(rid))
            outcome = "error"
            terminal = protocol.error(
                protocol.ERR_INTERNAL, "synthesis failed; see the server log", request_id=rid
            )
        finally:
            # Out of the books before the terminal message goes out, so a client that reuses
            # the id right after reading it is not told it is a duplicate.
            del self._requests[rid]
            request.rendering.release(outcome, interrupted=outcome == "cancelled")
            if terminal is None:
                self._protocol.abandon(rid)
        if terminal is not None:
            if isinstance(terminal, protocol.Error):
                self.state.metrics.errors.labels(terminal.code).inc()
            with contextlib.suppress(_ConnectionGone):
                await self._send(terminal)

    async def _stream(self, request: _Request) -> None:
        async with contextlib.aclosing(request.rendering.messages()) as messages:
            async for message in messages:
                await self._send(message)

    # -- outgoing ------------------------------------------------------------------------------

    async def _send(self, msg: protocol.ServerMessage) -> None:
        await self._write(self._protocol.send(msg))

    async def _write(self, frame: str | bytes) -> None:
        async with self._send_lock:
            if self.ws.closed or self._gone:
                raise _ConnectionGone
            try:
                # aiohttp waits here only once the kernel and transport buffers are full.
                async with asyncio.timeout(self.state.config.send_timeout or None):
                    if isinstance(frame, bytes):
                        await self.ws.send_bytes(frame)
                    else:
                        await self.ws.send_str(frame)
            except TimeoutError:
                self._drop_stalled()
                raise _ConnectionGone from None
            except (ConnectionError, RuntimeError) as e:
                raise _ConnectionGone from e

    def _drop_stalled(self) -> None:
        """The client stopped reading: free its requests' places now, not at the heartbeat."""
        self._gone = True
        _LOG.info(
            "connection from %s stopped reading (a send waited %.1f s): dropping it and its "
            "%d requests",
            self.client,
            self.state.config.send_timeout,
            len(self._requests),
        )
        self._abort()
        current = asyncio.current_task()
        for request in list(self._requests.values()):
            if request.task is not current:
                request.stop("closed")

    async def _send_error(self, code: str, message: str, request_id: str | None) -> None:
        self.state.metrics.errors.labels(code).inc()
        with contextlib.suppress(_ConnectionGone):
            await self._write(
                self._protocol.refuse(protocol.error(code, message, request_id=request_id))
            )
