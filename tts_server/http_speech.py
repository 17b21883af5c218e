"""``POST /v1/audio/speech``: OpenAI's speech API over the same admission and synthesis as the
WebSocket, and the discovery routes OpenAI's clients use (``/v1/models``, ``/v1/audio/voices``).

What a body means is :mod:`.openai_api`'s (pure); whether it starts is :func:`.verdict.judge`'s,
as for a WebSocket request; its audio is :meth:`.rendering.Rendering.messages`, the generator a
WebSocket session sends.  This module only moves that audio into a chunked response, as each
message is rendered: the headers and the first bytes leave with the first clause.

An admitted request is one :class:`HttpSpeech`, which owns its place (admission's booking and
the rendering) until it ends, whichever way: complete, the client gone (it closed the socket,
or stopped reading for ``--send-timeout``), shutdown, or a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from typing import Final, Literal

from aiohttp import web

import knowlithic_protocol as protocol
from knowlithic_protocol import formats, http

from . import openai_api
from .access import authorized, client_key, limit_unsent
from .openai_api import ApiError, SpeechRequest
from .rendering import Rendering
from .state import ServerState
from .verdict import Admit, NothingToSay, Refuse, judge

_LOG = logging.getLogger("tts_server.http_speech")

# How often a request being synthesized looks whether its client is still there.  aiohttp
# tells a handler nothing when the peer goes (its handler_cancellation would cancel every
# handler, WebSocket ones included), and a write notices only after the next segment is
# synthesized: a look every 50 ms frees the place within a tick.
_WATCH_INTERVAL: Final = 0.05
# How long a request's whole body may take to arrive: a body (at most client_max_size, 1 MiB)
# sent a byte now and then (a slowloris) would otherwise hold its connection and handler for
# ever, before admission ever sees it.
READ_BODY_TIMEOUT: Final = 10.0
# when /v1/models says the models were made: fixed, so that the answer never changes
_MODELS_CREATED: Final = 1_700_000_000

StopReason = Literal["shutdown", "closed"]


class _ClientGone(Exception):
    """The client closed the connection or stopped reading: nobody is left to answer."""


def error_response(error: ApiError) -> web.Response:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="knowlithic-tts"'
    return web.json_response(error.body(), status=error.status, headers=headers)


def default_voice(state: ServerState) -> str:
    """The voice an omitted ``voice`` or an OpenAI stock name means: the first loaded."""
    return next(iter(state.engine.voices))


# -- routes (app.py registers them) ------------------------------------------------------------


async def speech(request: web.Request, state: ServerState) -> web.StreamResponse:
    """``POST /v1/audio/speech``."""
    answer = await _answer(request, state)
    if isinstance(answer, ApiError):
        state.metrics.speech_responses.labels(str(answer.status)).inc()
        response = error_response(answer)
        if answer is openai_api.BODY_TIMEOUT:
            response.force_close()  # the rest of its body is never read: not kept alive
        return response
    return answer


async def models(request: web.Request, state: ServerState) -> web.Response:
    """``GET /v1/models``."""
    if not authorized(request, state.config.api_key):
        return error_response(openai_api.UNAUTHORIZED)
    return web.json_response(openai_api.models(_MODELS_CREATED))


async def voices(request: web.Request, state: ServerState) -> web.Response:
    """``GET /v1/audio/voices``."""
    if not authorized(request, state.config.api_key):
        return error_response(openai_api.UNAUTHORIZED)
    return web.json_response(openai_api.voices_list(state.describe_voices(), default_voice(state)))


async def _answer(request: web.Request, state: ServerState) -> web.StreamResponse | ApiError:
    config = state.config
    if state.shutting_down:
        return openai_api.SHUTTING_DOWN
    if not authorized(request, config.api_key):
        return openai_api.UNAUTHORIZED
    try:
        async with asyncio.timeout(READ_BODY_TIMEOUT):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return openai_api.TOO_LARGE
    except TimeoutError:
        _LOG.info("speech client %s sent its body too slowly: dropping it", client_key(request))
        return openai_api.BODY_TIMEOUT
    parsed = openai_api.parse_speech(
        request.content_type,
        body,
        voices=frozenset(name.lower() for name in state.voice_names),
        default_voice=default_voice(state),
        max_text_length=config.max_text_length,
    )
    if isinstance(parsed, ApiError):
        return parsed
    stream_id = openai_api.parse_stream_id(request.headers.get(http.STREAM_HEADER))
    if isinstance(stream_id, ApiError):
        return stream_id
    client = client_key(request)
    msg = parsed.message(uuid.uuid4().hex, stream_id)
    # A request has a connection of its own, so the WebSocket's per-connection bound is on
    # the reply instead: an admitted reply's requests skip the capacity check, and without
    # it one X-Stream-Id would carry any number of them past the caps.
    in_flight = state.streams.in_flight((client, stream_id)) if stream_id is not None else 0
    verdict = judge(
        state,
        msg,
        client=client,
        in_flight=in_flight,
        duplicate=False,
        speed=parsed.speed,
        in_flight_on="reply",  # X-Stream-Id's
    )
    if isinstance(verdict, Refuse):
        state.metrics.errors.labels(verdict.code).inc()
        _LOG.debug("refused a speech request from %s: %s", client, verdict.code)
        return openai_api.refusal(
            verdict.code, verdict.message, retry_after=state.rate_limiter.retry_after(client)
        )
    if isinstance(verdict, NothingToSay):
        state.metrics.requests.labels("complete").inc()
        return _silence(parsed, state)
    limit_unsent(request)
    served = HttpSpeech(request, state, msg, verdict, parsed)
    state.speeches.add(served)
    try:
        return await served.run()
    finally:
        state.speeches.discard(served)


def _silence(parsed: SpeechRequest, state: ServerState) -> web.Response:
    """The answer to input with nothing to say (emoji, bare tags): a valid, empty file."""
    encoder = formats.new_encoder(
        parsed.response_format,
        sample_rate=parsed.sample_rate,
        bitrate=parsed.bitrate or state.config.opus_bitrate,
    )
    data = encoder.encode(b"", last=True)
    sse = parsed.stream_format == "sse"
    body = (_sse_delta(data) if data else b"") + _SSE_DONE if sse else data
    state.metrics.speech_responses.labels("200").inc()
    return web.Response(body=body, headers=_audio_headers(parsed, encoder.sample_rate))


def _audio_headers(parsed: SpeechRequest, sample_rate: int) -> dict[str, str]:
    sse = parsed.stream_format == "sse"
    return {
        "Content-Type": openai_api.SSE_CONTENT_TYPE
        if sse
        else openai_api.CONTENT_TYPES[parsed.response_format],
        # the rate the audio is at (a codec may not offer the rate asked for): raw PCM
        # says it nowhere else
        http.RATE_HEADER: str(sample_rate),
        "Cache-Control": "no-store",
    }


def _sse_delta(data: bytes) -> bytes:
    event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


# OpenAI's last event; there are no tokens to count here
_SSE_DONE: Final = (
    b"data: "
    + json.dumps(
        {
            "type": "speech.audio.done",
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        },
        separators=(",", ":"),
    ).encode()
    + b"\n\n"
)


# -- one admitted request -----------------------------------------------------------------------


class HttpSpeech:
    """One admitted speech request: owns its booking and rendering until it ends."""

    def __init__(
        self,
        request: web.Request,
        state: ServerState,
        msg: protocol.TextToSpeech,
        verdict: Admit,
        parsed: SpeechRequest,
    ) -> None:
        self._request = request
        self._state = state
        self._msg = msg
        self._parsed = parsed
        self._client = client_key(request)
        self._rendering = Rendering.admitted(msg, verdict, state, speed=parsed.speed)
        self._response: web.StreamResponse | None = None
        self._failed: ApiError | None = None  # the answer, if it failed before any audio
        self._task: asyncio.Task[None] | None = None
        self.stop_reason: StopReason | None = None

    async def run(self) -> web.StreamResponse:
        """Serve it; returns the response (streamed already) or the error it ended with."""
        task = self._task = asyncio.create_task(self._serve(), name="tts-http-speech")
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=_WATCH_INTERVAL)
                if not task.done() and self._client_gone():
                    self.stop("closed")
            await task
        except asyncio.CancelledError:  # aiohttp is tearing the server down
            self.stop("closed")
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        finally:
            # a task cancelled before its first step never ran its own finally
            self._release("closed")
        if self._response is not None:
            return self._response
        error = self._failed or openai_api.INTERNAL
        self._state.metrics.speech_responses.labels(str(error.status)).inc()
        return error_response(error)

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None and self._task is not None:
            self.stop_reason = reason
            self._task.cancel()

    async def shutdown(self, grace: float) -> None:
        """Let it run for up to ``grace`` seconds, then end it."""
        task = self._task
        if task is None:
            return
        if grace > 0:
            await asyncio.wait({task}, timeout=grace)
        if not task.done():
            self.stop("shutdown")
            await asyncio.gather(task, return_exceptions=True)

    def _client_gone(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.is_closing()

    async def _serve(self) -> None:
        rendering = self._rendering
        outcome = "complete"
        try:
            async with contextlib.aclosing(rendering.messages()) as messages:
                async for message in messages:
                    if isinstance(message, protocol.Audio):
                        await self._send(message.data, message.sample_rate)
            if self._response is None:  # every byte was held back to the end: none
                await self._prepare(rendering.sample_rate)
            response = self._response
            assert response is not None
            if self._parsed.stream_format == "sse":
                await self._write(_SSE_DONE)
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except asyncio.CancelledError:
            outcome = "closed"
            if self.stop_reason is None:
                raise
            if self.stop_reason == "shutdown":
                outcome = "error"
                self._end_badly(openai_api.SHUTTING_DOWN, protocol.ERR_SHUTTING_DOWN)
        except _ClientGone:
            outcome = "closed"
        except Exception:
            _LOG.exception("a speech request from %s failed", self._client)
            outcome = "error"
            self._end_badly(openai_api.INTERNAL, protocol.ERR_INTERNAL)
        finally:
            self._release(outcome)

    def _release(self, outcome: str) -> None:
        """The request ended: its place, its rendering and its gauge are given back, once."""
        # the client went: its reply is over
        released = self._rendering.release(outcome, interrupted=outcome == "closed")
        if released and outcome == "closed":
            _LOG.info("speech request from %s ended: the client went away", self._client)

    def _end_badly(self, error: ApiError, code: str) -> None:
        """Answer with ``error`` if nothing was sent; else cut the stream short, which tells
        the client the file is incomplete (no last chunk)."""
        self._state.metrics.errors.labels(code).inc()
        if self._response is None:
            self._failed = error
        elif (transport := self._request.transport) is not None:
            transport.abort()

    async def _send(self, data: bytes, sample_rate: int | None) -> None:
        if self._response is None:
            await self._prepare(sample_rate or self._rendering.sample_rate)
        await self._write(_sse_delta(data) if self._parsed.stream_format == "sse" else data)

    async def _prepare(self, sample_rate: int) -> None:
        response = web.StreamResponse(headers=_audio_headers(self._parsed, sample_rate))
        response.enable_chunked_encoding()
        try:
            await response.prepare(self._request)
        except (ConnectionError, RuntimeError) as e:
            raise _ClientGone from e
        self._response = response
        self._state.metrics.speech_responses.labels("200").inc()

    async def _write(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        timeout = self._state.config.send_timeout or None
        started = time.monotonic()
        try:
            # aiohttp waits here only once the kernel and transport buffers are full
            async with asyncio.timeout(timeout):
                await response.write(data)
        except TimeoutError:
            _LOG.info(
                "speech client %s stopped reading (a write waited %.1f s): dropping it",
                self._client,
                time.monotonic() - started,
            )
            if (transport := self._request.transport) is not None:
                transport.abort()
            raise _ClientGone from None
        except (ConnectionError, RuntimeError) as e:
            raise _ClientGone from e
