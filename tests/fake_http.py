"""A scriptable OpenAI-style speech endpoint for the HTTP transport's tests.

A real aiohttp server on 127.0.0.1 (an ephemeral port): ``POST /v1/audio/speech`` answers
with the same deterministic "speech" as :mod:`tests.fake_knowlithic` (so the same digests
prove the audio), as a chunked body in any shape a server sends (raw PCM with or without
``X-Sample-Rate``, one WAV header, none, a header per chunk), in chunks of any size, and
with every fault: refusals (OpenAI-style error bodies), a busy 503, a connection cut
mid-body, a response that stalls.  It has no WebSocket: an upgrade gets a 404.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from knowlithic_protocol import formats
from knowlithic_protocol.http import CONTENT_TYPES
from tests.fake_knowlithic import speech_for, wav_header

Wav = Literal["once", "absent", "per_chunk"]


@dataclass
class HttpBehavior:
    """What the endpoint does; tests change fields between turns."""

    api_key: str | None = None
    chunk_bytes: int = 1600  # of audio per body chunk (a WAV header counts)
    chunk_delay: float = 0.0  # between chunks: each then reaches the client on its own
    first_audio_delay: float = 0.0
    state_rate: bool = True  # send X-Sample-Rate
    content_type: str | None = None  # instead of the one the format has
    wav: Wav = "once"  # for response_format wav
    actual_sample_rate: int | None = None  # produce audio at this rate, not the one asked
    models_status: int = 200  # GET /v1/models
    status: int | None = None  # answer every POST with this status and an error body
    error_code: str | None = None
    retry_after: str | None = None
    max_errors: int | None = None  # how many times (None: every time)
    error_for: dict[str, int] = field(default_factory=dict)  # input text -> status
    drop_after_chunks: int | None = None  # cut the connection after this many chunks
    drop_only: frozenset[str] | None = None  # ...for these texts (None: all)
    max_drops: int | None = None
    stall_after_chunks: int | None = None  # send this many chunks, then nothing more
    # close this many requests' connections before answering (a kept-alive connection the
    # server closed just as the client reused it)
    reset_before_answer: int = 0
    # answer a WebSocket upgrade (any GET but /v1/models) with a 200 page, as a web server
    # that ignores the Upgrade header does; else there is no such route: 404
    page_for_upgrade: bool = False


@dataclass
class HttpReceived:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # of every request
    probes: int = 0  # GET /v1/models
    connections: set[int] = field(default_factory=set)  # the ids of the TCP connections
    completed: list[str] = field(default_factory=list)  # texts whose whole body was sent
    abandoned: list[str] = field(default_factory=list)  # texts whose client went away

    @property
    def texts(self) -> list[str]:
        return [r["input"] for r in self.requests]


class FakeHttpServer:
    def __init__(self, behavior: HttpBehavior | None = None) -> None:
        self.behavior = behavior or HttpBehavior()
        self.received = HttpReceived()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/{path:.*}", self._page)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Go away like a crashed server: connections reset."""
        if self._runner is not None:
            for conn in list(self._runner.server.connections if self._runner.server else []):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._runner.cleanup()
            self._runner = None

    async def _page(self, request: web.Request) -> web.StreamResponse:
        if not self.behavior.page_for_upgrade:
            raise web.HTTPNotFound()
        return web.Response(text="<html><body>It works!</body></html>", content_type="text/html")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.received.probes += 1
        self._note_connection(request)
        if not self._authorized(request):
            return _error(401, "invalid API key", code="invalid_api_key")
        if self.behavior.models_status != 200:
            return web.Response(status=self.behavior.models_status)
        return web.json_response({"object": "list", "data": [{"id": "knowlithic"}]})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        b = self.behavior
        self._note_connection(request)
        self.received.headers.append(dict(request.headers))
        body = await request.json()
        self.received.requests.append(body)
        text: str = body["input"]
        if b.reset_before_answer > 0:
            b.reset_before_answer -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if not self._authorized(request):
            return _error(401, "invalid API key", code="invalid_api_key")
        status = b.error_for.get(text) or b.status
        if status is not None and b.max_errors != 0:
            if b.max_errors is not None:
                b.max_errors -= 1
            headers = {"Retry-After": b.retry_after} if b.retry_after else {}
            return _error(status, f"refused by the test ({status})", code=b.error_code, **headers)
        fmt = body["response_format"]
        rate = b.actual_sample_rate or body.get("sample_rate") or 24000
        chunks = self._chunks(fmt, speech_for(text, rate), rate)
        response = web.StreamResponse()
        response.content_type = b.content_type or CONTENT_TYPES[fmt]
        if b.state_rate:
            response.headers["X-Sample-Rate"] = str(rate)
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            await asyncio.sleep(b.first_audio_delay)
            for n, chunk in enumerate(chunks):
                if self._should_drop(n, text):
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if b.stall_after_chunks is not None and n >= b.stall_after_chunks:
                    await asyncio.Event().wait()  # until the client goes (handler cancelled)
                await response.write(chunk)
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.received.abandoned.append(text)
            raise
        self.received.completed.append(text)
        return response

    def _chunks(self, fmt: str, pcm: bytes, rate: int) -> list[bytes]:
        b = self.behavior
        size = b.chunk_bytes
        if fmt == "opus":
            encoder = formats.new_encoder("opus", sample_rate=rate)
            parts = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]
            stream = b"".join(
                encoder.encode(part, last=n == len(parts) - 1) for n, part in enumerate(parts)
            )
            return [stream[i : i + size] for i in range(0, len(stream), size)]
        if fmt == "wav" and b.wav == "per_chunk":
            # a WAV file per piece of audio, as the Tabbly seed's server writes them
            step = max(2, size - 44)
            return [
                wav_header(rate, len(pcm[i : i + step])) + pcm[i : i + step]
                for i in range(0, len(pcm), step)
            ]
        stream = wav_header(rate, 0xFFFFFFFF) + pcm if fmt == "wav" and b.wav == "once" else pcm
        return [stream[i : i + size] for i in range(0, len(stream), size)]

    def _should_drop(self, chunks_sent: int, text: str) -> bool:
        b = self.behavior
        if b.drop_after_chunks is None or chunks_sent < b.drop_after_chunks:
            return False
        if b.drop_only is not None and text not in b.drop_only:
            return False
        if b.max_drops is None:
            return True
        if b.max_drops <= 0:
            return False
        b.max_drops -= 1
        return True

    def _authorized(self, request: web.Request) -> bool:
        key = self.behavior.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    def _note_connection(self, request: web.Request) -> None:
        if request.transport is not None:
            self.received.connections.add(id(request.transport))


def _error(status: int, message: str, *, code: str | None, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": "test", "param": None, "code": code}}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )
