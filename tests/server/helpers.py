"""A plain protocol client for the server tests, and what it records per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

import knowlithic_protocol as protocol
from tts_server.app import server_state, stop
from tts_server.config import ServerConfig
from tts_server.state import ServerState

# No stream limit and no admission by headroom unless a test sets them: both depend on the
# machine and its load, and tests of other features send many requests without a stream id
# (each is a stream).
BASE_CONFIG = ServerConfig(
    hosts=("127.0.0.1",), port=0, heartbeat=5.0, workers=2, max_streams=0, first_audio_target=0
)
RECEIVE_TIMEOUT = 20.0


@dataclass
class RunningServer:
    server: TestServer
    config: ServerConfig

    @property
    def http_url(self) -> str:
        return str(self.server.make_url("/"))

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://", 1)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM."""
        assert self.server.runner is not None
        await stop(self.server.runner)

    @property
    def state(self) -> ServerState:
        return server_state(self.server.app)


StartServer = Callable[..., Awaitable[RunningServer]]


@dataclass
class Result:
    """Everything one request produced, in arrival order."""

    request_id: str
    audio: list[protocol.Audio] = field(default_factory=list)
    words: list[protocol.WordTimestamps] = field(default_factory=list)
    terminal: protocol.Complete | protocol.Error | None = None
    sent_at: float = 0.0
    first_audio_at: float | None = None
    ended_at: float | None = None
    after_terminal: list[protocol.ServerMessage] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(a.data for a in self.audio)

    @property
    def completed(self) -> bool:
        return isinstance(self.terminal, protocol.Complete) and not self.terminal.cancelled


class Client:
    """A plain protocol client over one aiohttp WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, tagged: bool) -> None:
        self.ws = ws
        self.tagged = tagged
        self.capabilities: protocol.Capabilities | None = None
        self.results: dict[str, Result] = {}
        self.connection_errors: list[protocol.Error] = []

    async def send(self, msg: protocol.ClientMessage) -> None:
        await self.ws.send_str(protocol.encode_client_message(msg))

    async def send_raw(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> protocol.ServerMessage:
        message = await self.ws.receive(timeout=timeout)
        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise ConnectionError(f"socket ended: {message.type} {message.data!r}")
        return protocol.decode_server_message(message.data, tagged_binary=self.tagged)

    async def request(
        self,
        text: str,
        *,
        request_id: str = "r1",
        voice: str = "joe",
        sample_rate: int = 16000,
        output_format: protocol.OutputFormat = "pcm",
        word_timestamps: bool = False,
        stream_id: str | None = None,
        bitrate: int | None = None,
    ) -> Result:
        result = self.results[request_id] = Result(request_id, sent_at=time.perf_counter())
        await self.send(
            protocol.TextToSpeech(
                request_id,
                text,
                voice,
                sample_rate,
                output_format,
                word_timestamps,
                stream_id,
                bitrate,
            )
        )
        return result

    def _dispatch(self, msg: protocol.ServerMessage) -> Result | None:
        now = time.perf_counter()
        request_id = getattr(msg, "request_id", None)
        if request_id is None:
            if isinstance(msg, protocol.Error):
                self.connection_errors.append(msg)
            return None
        result = self.results.setdefault(request_id, Result(request_id))
        if result.terminal is not None:
            result.after_terminal.append(msg)
        elif isinstance(msg, protocol.Audio):
            result.first_audio_at = result.first_audio_at or now
            result.audio.append(msg)
        elif isinstance(msg, protocol.WordTimestamps):
            result.words.append(msg)
        elif isinstance(msg, protocol.Complete | protocol.Error):
            result.terminal = msg
            result.ended_at = now
        return result

    async def until_done(self, *request_ids: str, timeout: float = RECEIVE_TIMEOUT) -> None:
        """Read messages until every request named has its terminal message."""
        done = {
            r for r in request_ids if r in self.results and self.results[r].terminal is not None
        }
        pending = set(request_ids) - done  # some may have ended while reading for others
        async with asyncio.timeout(timeout):
            while pending:
                result = self._dispatch(await self.receive())
                if result is not None and result.terminal is not None:
                    pending.discard(result.request_id)

    async def until_first(self, request_id: str, timeout: float = RECEIVE_TIMEOUT) -> None:
        """Read messages until the request has its first audio or its terminal message."""
        result = self.results[request_id]
        async with asyncio.timeout(timeout):
            while not result.audio and result.terminal is None:
                self._dispatch(await self.receive())

    async def run(self, text: str, *, timeout: float = RECEIVE_TIMEOUT, **kwargs: Any) -> Result:
        result = await self.request(text, **kwargs)
        await self.until_done(result.request_id, timeout=timeout)
        return result

    async def drain(self, seconds: float) -> list[protocol.ServerMessage]:
        """Whatever arrives within ``seconds`` (dispatched into the results too)."""
        seen: list[protocol.ServerMessage] = []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    msg = await self.receive()
                    self._dispatch(msg)
                    seen.append(msg)
        except TimeoutError:
            pass
        return seen


Connect = Callable[..., Awaitable[Client]]
