"""One WebSocket connection: its requests, their lifecycle, and the per-connection limits.

Every accepted request runs as its own task, so several can be in flight on one connection;
each task sends its own messages in order.  Every request ends with exactly one terminal
message: ``Complete``, ``Complete(cancelled=True)`` after a ``Cancel``, or ``Error``; a
request refused at admission gets only its ``Error``.  Those rules are kept by
:class:`knowlithic_protocol.server.ServerProtocol`, through which every frame goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import WSCloseCode, WSMsgType, web

import knowlithic_protocol as protocol
from knowlithic_protocol import formats
from knowlithic_protocol.server import Invalid, ServerProtocol

from . import audio
from .admission import StreamKey
from .audio import StreamResampler
from .config import ServerConfig
from .engine import RenderedSegment, Voice
from .state import ServerState
from .text import Boundary, Segment, split_segments
from .timestamps import TimedWord

_LOG = logging.getLogger("tts_server.session")

# Pause after a first clause split off early, and after a sentence end Piper found inside a
# segment, as a share of the pause between sentences.
_CLAUSE_PAUSE_RATIO: Final = 0.5
# How long ending the last requests and the closing handshake may take at shutdown.
_CLOSE_TIMEOUT: Final = 3.0

StopReason = Literal["cancel", "shutdown", "closed"]


@dataclass
class _Request:
    msg: protocol.TextToSpeech
    voice: Voice
    arrived: float
    segments: list[Segment]
    stream: StreamKey | None
    # When the listener needs the first audio: at once for a reply's first sentence, after
    # the audio ahead of it for a later one.  Segment deadlines count from here.
    needed_at: float
    estimate: float  # seconds of audio expected (a low estimate)
    audio: float = 0.0  # seconds of audio rendered so far
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


# A low estimate of the pace of speech (joe: 0.047-0.064 s per character, pauses included):
# a later sentence of a reply is scheduled for when the audio before it would run out, and
# guessing that moment early is safe where guessing it late would make a gap.
_SECONDS_PER_CHARACTER: Final = 0.04


def _estimated_seconds(segments: list[Segment], config: ServerConfig) -> float:
    pace = config.length_scale or 1.0
    return sum(len(s.text) for s in segments) * _SECONDS_PER_CHARACTER * pace


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
        voice = state.resolve(msg.voice)
        refusal = self._refusal(msg, voice)
        if refusal is not None or voice is None:
            code, text = refusal or (protocol.ERR_UNKNOWN_VOICE, "unknown voice")
            _LOG.debug("refused request %s from %s: %s", _short(rid), self.client, code)
            await self._send_error(code, text, rid)
            return
        segments = split_segments(msg.text)
        if not segments:
            # Nothing to say (empty, spaces, emoji, bare tags): done at once, no room taken.
            state.metrics.requests.labels("complete").inc()
            self._protocol.start(rid)
            await self._send(protocol.Complete(rid))
            return
        stream = (self.client, msg.stream_id) if msg.stream_id is not None else None
        if not self._has_place(stream):
            _LOG.debug("refused request %s from %s: busy", _short(rid), self.client)
            await self._send_error(
                protocol.ERR_BUSY, "the server is at capacity; retry shortly", rid
            )
            return
        estimate = _estimated_seconds(segments, state.config)
        delay = state.streams.begin(stream, estimate)
        if delay > 0:
            # Its audio is not needed yet: whole sentences sound better than an early clause.
            segments = split_segments(msg.text, first_clause=False)
        state.capacity.acquire()
        now = asyncio.get_running_loop().time()
        request = _Request(msg, voice, now, segments, stream, now + delay, estimate)
        self._requests[rid] = request
        self._protocol.start(rid)
        state.metrics.active_requests.inc()
        request.task = asyncio.create_task(self._serve(request), name=f"tts-request-{rid[:40]}")

    def _has_place(self, stream: StreamKey | None) -> bool:
        """Whether the request's reply is, or may become, one the server is speaking.

        A reply is admitted or refused as a whole, at its first request: the later ones of an
        admitted reply always have a place, those of a refused one never (for a while).
        """
        streams, metrics = self.state.streams, self.state.metrics
        if streams.admitted(stream):
            return True
        if streams.refused(stream):
            return False
        if self.state.full:
            metrics.streams.labels("refused").inc()
            streams.refuse(stream)
            return False
        if streams.make_room():
            metrics.streams.labels("yielded").inc()
        metrics.streams.labels("admitted").inc()
        return True

    def _refusal(self, msg: protocol.TextToSpeech, voice: Voice | None) -> tuple[str, str] | None:
        """Why the request cannot start, capacity aside, as (code, message)."""
        state, config = self.state, self.state.config
        if state.shutting_down:
            return protocol.ERR_SHUTTING_DOWN, "the server is shutting down"
        if self._protocol.is_in_flight(msg.request_id):
            return (
                protocol.ERR_DUPLICATE_REQUEST,
                "this request id is already in flight on this connection; the first request "
                "continues",
            )
        if not state.rate_limiter.allow(self.client):
            wait = state.rate_limiter.retry_after(self.client)
            return protocol.ERR_RATE_LIMITED, f"too many requests; retry in {wait:.2f} s"
        if len(msg.text) > config.max_text_length:
            return (
                protocol.ERR_TEXT_TOO_LONG,
                f"text has {len(msg.text)} characters; the limit is {config.max_text_length}",
            )
        if voice is None:
            return (
                protocol.ERR_UNKNOWN_VOICE,
                f"unknown voice {msg.voice[:64]!r}; available: {', '.join(state.voice_names)}",
            )
        if len(self._requests) >= config.max_requests_per_connection:
            return (
                protocol.ERR_TOO_MANY_REQUESTS,
                f"{len(self._requests)} requests are in flight on this connection; the limit "
                f"is {config.max_requests_per_connection}",
            )
        return None

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
            self.state.capacity.release()
            self.state.streams.end(
                request.stream,
                cancelled=outcome == "cancelled",
                misestimate=request.audio - request.estimate,
            )
            self.state.metrics.active_requests.dec()
            self.state.metrics.requests.labels(outcome).inc()
            if terminal is None:
                self._protocol.abandon(rid)
        if terminal is not None:
            if isinstance(terminal, protocol.Error):
                self.state.metrics.errors.labels(terminal.code).inc()
            with contextlib.suppress(_ConnectionGone):
                await self._send(terminal)

    async def _stream(self, request: _Request) -> None:
        msg, voice, state = request.msg, request.voice, self.state
        config, loop = state.config, asyncio.get_running_loop()
        segments = request.segments
        resampler = StreamResampler(voice.sample_rate, msg.sample_rate)
        chunk_samples = max(1, msg.sample_rate * config.chunk_ms // 1000)
        clause_pause = config.sentence_silence * _CLAUSE_PAUSE_RATIO
        pauses = {Boundary.SENTENCE: config.sentence_silence, Boundary.CLAUSE: clause_pause}
        elapsed = 0.0  # seconds of this request's audio before the current segment
        compute = 0.0
        sequence = 0
        encoder = formats.new_encoder(msg.output_format, sample_rate=msg.sample_rate)
        for index, segment in enumerate(segments):
            render = functools.partial(
                voice.render,
                segment.text,
                resampler=resampler,
                pause_after=pauses.get(segment.boundary, 0.0),
                inner_pause=clause_pause,
                last=index == len(segments) - 1,
                with_words=msg.word_timestamps,
                synthesis=state.synthesis,
            )
            # Deadline: when the listener would run out of this request's audio.
            rendered: RenderedSegment = await state.scheduler.run(
                render, request.needed_at + elapsed
            )
            compute += rendered.compute_seconds
            if rendered.words:
                await self._send(
                    protocol.WordTimestamps(
                        request_id=msg.request_id,
                        words=_shifted(rendered.words, elapsed),
                        estimated=rendered.estimated,
                    )
                )
            elapsed += rendered.native_seconds
            request.audio = elapsed
            position = 0
            for size in audio.chunk_sizes(len(rendered.pcm) // 2, chunk_samples):
                data = rendered.pcm[position : position + size * 2]
                position += size * 2
                data = encoder.encode(data)
                if sequence == 0:
                    state.metrics.time_to_first_audio.observe(loop.time() - request.arrived)
                await self._send(
                    protocol.Audio(
                        request_id=msg.request_id,
                        data=data,
                        sample_rate=msg.sample_rate,
                        sequence=sequence,
                    )
                )
                sequence += 1
        if elapsed > 0:
            state.metrics.audio_seconds.inc(elapsed)
            state.metrics.real_time_factor.observe(compute / elapsed)
        _LOG.debug(
            "request %s: %d characters, %.2f s of audio in %.3f s of synthesis",
            _short(msg.request_id),
            len(msg.text),
            elapsed,
            compute,
        )

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


def _shifted(words: tuple[TimedWord, ...], offset: float) -> tuple[protocol.WordTiming, ...]:
    return tuple(protocol.WordTiming(w.word, w.start + offset, w.end + offset) for w in words)
