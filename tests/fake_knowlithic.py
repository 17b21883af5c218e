"""A scriptable Knowlithic-protocol server for the plugin's tests.

A real aiohttp WebSocket server on 127.0.0.1 with an ephemeral port: the plugin talks to it
over a real socket.  Its "speech" is deterministic noise derived from the text, so a test can
compute exactly which bytes each request must produce and check them by hash.  Every
server variant the seeds show can be switched on: legacy (no subprotocol) or
``knowlithic.v1``; base64 JSON under ``audio_data`` or ``data``, tagged or untagged binary;
raw PCM, one WAV per request or one WAV per message; odd chunk sizes; other completion
names; and faults (handshake statuses, stalls, drops, errors).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import WSMessage, WSMsgType, web

import knowlithic_protocol as protocol
from knowlithic_protocol import formats

Payload = Literal["request", "pcm", "wav_per_request", "wav_per_message"]
Transport = Literal["auto", "base64", "binary"]

SECONDS_PER_CHAR = 0.012


def speech_for(text: str, sample_rate: int) -> bytes:
    """The deterministic s16le "speech" the server produces for ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    samples = max(int(sample_rate * SECONDS_PER_CHAR * len(text)), sample_rate // 50)
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, size=samples, dtype=np.int16).astype("<i2").tobytes()


def wav_header(
    sample_rate: int, data_size: int, *, extra_chunk: bytes = b"", channels: int = 1
) -> bytes:
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block, block, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunk
    riff_size = 0xFFFFFFFF if data_size == 0xFFFFFFFF else len(body) + 8 + data_size
    return b"RIFF" + struct.pack("<I", riff_size) + body + b"data" + struct.pack("<I", data_size)


@dataclass
class Behavior:
    """What the server does; tests change fields between turns."""

    subprotocol: bool = True
    transport: Transport = "auto"  # auto: tagged binary with the subprotocol, base64 without
    audio_field: str = "audio_data"
    tag_messages: bool = True  # put request_id on every message
    payload: Payload = "request"  # "request": what the request's output_format asks for
    chunk_bytes: int = 1600
    completion_type: str = "complete"
    word_timestamps: bool = True
    stated_sample_rate: bool = True  # put sample_rate on raw PCM messages
    rate_stated_for: dict[str, int] = field(default_factory=dict)  # text -> a rate to claim
    actual_sample_rate: int | None = None  # produce audio at this rate, not the one asked
    wav_extra_chunk: bytes = b""  # e.g. a LIST chunk before data
    wav_trailer: bytes = b""  # bytes after a sized data chunk
    wav_claimed_size: int | None = None  # a data size in the header that lies short
    channels: int = 1  # WAV payloads only: each sample repeated on every channel
    voices: tuple[str, ...] = ("elise", "joe")
    output_formats: tuple[str, ...] = protocol.OUTPUT_FORMATS  # as the capabilities say
    corrupt_payload: int | None = None  # flip a byte in this audio message of every request
    truncate_last_payload: int = 0  # cut this many bytes off each request's last audio message
    max_text_length: int | None = None
    handshake_status: int | None = None
    idle_timeout: float | None = None  # close a socket that sends nothing (not even a ping)
    close_on_connect: bool = False  # accept the handshake, then close at once (code 1008)
    api_key: str | None = None
    first_audio_delay: float = 0.0
    chunk_delay: float = 0.0
    stall: bool = False  # accept requests and never answer
    stall_after_chunks: int | None = None  # send this many chunks, then nothing more
    stall_only: frozenset[str] | None = None  # ...for requests with these texts (None: all)
    withhold_completion: bool = False  # send all the audio, never the completion
    huge_message: int | None = None  # send one text frame of this many bytes first, once
    ignore_cancel: bool = False  # keep streaming a cancelled request, then complete it
    drop_after_chunks: int | None = None  # abort the socket after sending this many chunks
    max_drops: int | None = None  # how many times to do that (None: every time)
    error_for: dict[str, protocol.Error] = field(default_factory=dict)  # text -> error
    max_errors: int | None = None  # how many times to answer with those (None: every time)
    before_audio: list[str | bytes] = field(default_factory=list)  # raw frames to send first


@dataclass
class Received:
    connections: int = 0
    requests: list[protocol.TextToSpeech] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    handshake_headers: list[dict[str, str]] = field(default_factory=list)
    handshake_targets: list[str] = field(default_factory=list)  # path and query


class FakeKnowlithicServer:
    def __init__(self, behavior: Behavior | None = None) -> None:
        self.behavior = behavior or Behavior()
        self.received = Received()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Go away like a crashed server: sockets reset, no close handshake."""
        await self.drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def drop_connections(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for ws in list(self._sockets):
            transport = ws._req.transport if ws._req is not None else None
            if transport is not None:
                transport.abort()
        self._sockets.clear()
        await asyncio.sleep(0)

    async def close_connections(self, code: int = 1001) -> None:
        """Close every socket with a proper close frame."""
        for ws in list(self._sockets):
            await ws.close(code=code)

    @property
    def open_connections(self) -> int:
        return sum(1 for ws in self._sockets if not ws.closed)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        b = self.behavior
        self.received.handshake_headers.append(dict(request.headers))
        self.received.handshake_targets.append(request.path_qs)
        if b.handshake_status is not None:
            return web.Response(status=b.handshake_status, text="refused by test")
        if b.api_key is not None and request.headers.get("Authorization") != f"Bearer {b.api_key}":
            return web.Response(status=401, text="bad key")
        protocols = (protocol.SUBPROTOCOL,) if b.subprotocol else ()
        ws = web.WebSocketResponse(
            protocols=protocols, autoping=True, receive_timeout=b.idle_timeout
        )
        await ws.prepare(request)
        self.received.connections += 1
        self._sockets.add(ws)
        v1 = ws.ws_protocol == protocol.SUBPROTOCOL
        if v1:
            await ws.send_str(self._capabilities())
        if b.close_on_connect:
            await ws.close(code=1008, message=b"policy violation")
            self._sockets.discard(ws)
            return ws
        running: dict[str, asyncio.Task[None]] = {}
        # a server that does not tag its messages can only answer one request at a time
        serial = asyncio.Lock() if not b.tag_messages else None
        try:
            async for msg in _until_idle(ws):
                if msg.type != WSMsgType.TEXT:
                    continue
                message = protocol.decode_client_message(msg.data)
                if isinstance(message, protocol.TextToSpeech):
                    self.received.requests.append(message)
                    task = asyncio.create_task(self._serve(ws, message, v1, serial))
                    running[message.request_id] = task
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    task.add_done_callback(functools.partial(_forget, running, message.request_id))
                elif isinstance(message, protocol.Cancel):
                    self.received.cancels.append(message.request_id)
                    task_ = running.pop(message.request_id, None)
                    if task_ is not None and not b.ignore_cancel:
                        task_.cancel()
                        await self._send(
                            ws,
                            v1,
                            {"type": b.completion_type, "cancelled": True},
                            message.request_id,
                        )
        finally:
            for task in running.values():
                task.cancel()
            self._sockets.discard(ws)
        return ws

    def _capabilities(self) -> str:
        b = self.behavior
        caps = protocol.Capabilities(
            protocol_version=protocol.PROTOCOL_VERSION,
            voices=b.voices,
            output_formats=b.output_formats,
            sample_rates=(8000, 16000, 22050, 24000, 44100, 48000),
            word_timestamps=b.word_timestamps,
            max_text_length=b.max_text_length,
            max_requests_in_flight=16,
        )
        out = protocol.encode_server_message(caps)
        assert isinstance(out, str)
        return out

    async def _serve(
        self,
        ws: web.WebSocketResponse,
        req: protocol.TextToSpeech,
        v1: bool,
        serial: asyncio.Lock | None,
    ) -> None:
        if serial is None:
            await self._answer(ws, req, v1)
            return
        async with serial:
            await self._answer(ws, req, v1)

    async def _answer(
        self, ws: web.WebSocketResponse, req: protocol.TextToSpeech, v1: bool
    ) -> None:
        b = self.behavior
        if b.stall:
            await asyncio.Event().wait()
        if b.huge_message is not None:
            size, b.huge_message = b.huge_message, None
            await ws.send_str('{"type": "note", "pad": "' + "x" * size + '"}')
        for frame in b.before_audio:
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        if (err := b.error_for.get(req.text)) is not None and b.max_errors != 0:
            if b.max_errors is not None:
                b.max_errors -= 1
            out = protocol.encode_server_message(
                protocol.error(
                    err.code, err.message, request_id=req.request_id, retryable=err.retryable
                )
            )
            assert isinstance(out, str)
            await ws.send_str(out)
            return
        rate = b.actual_sample_rate or req.sample_rate
        pcm = speech_for(req.text, rate)
        if req.word_timestamps and b.word_timestamps:
            await self._send(
                ws,
                v1,
                {"type": "word_timestamps", "words": _timings(req.text), "estimated": True},
                req.request_id,
            )
        await asyncio.sleep(b.first_audio_delay)
        for n, chunk in enumerate(self._chunks(req, pcm, rate)):
            if self._should_drop(n):
                await self.drop_connections()
                return
            if (
                b.stall_after_chunks is not None
                and n >= b.stall_after_chunks
                and (b.stall_only is None or req.text in b.stall_only)
            ):
                await asyncio.Event().wait()
            stated = b.rate_stated_for.get(req.text, rate)
            await self._send_audio(ws, v1, req.request_id, chunk, rate=stated, seq=n)
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
        if b.withhold_completion:
            await asyncio.Event().wait()
        await self._send(ws, v1, {"type": b.completion_type}, req.request_id)

    def _should_drop(self, chunks_sent: int) -> bool:
        b = self.behavior
        if b.drop_after_chunks is None or chunks_sent < b.drop_after_chunks:
            return False
        if b.max_drops is None:
            return True
        if b.max_drops <= 0:
            return False
        b.max_drops -= 1
        return True

    def _chunks(self, req: protocol.TextToSpeech, pcm: bytes, rate: int) -> list[bytes]:
        b = self.behavior
        payload = b.payload
        if payload == "request" and req.output_format == "opus":
            return self._corrupted(_opus_pages(pcm, rate, b.chunk_bytes))
        if payload == "request":
            payload = "wav_per_request" if req.output_format == "wav" else "pcm"
        if b.channels > 1:
            mono = np.frombuffer(pcm, dtype="<i2")
            pcm = np.repeat(mono, b.channels).astype("<i2").tobytes()
        size = b.chunk_bytes
        parts = [pcm[i : i + size] for i in range(0, len(pcm), size)]
        if payload == "wav_per_message":
            return [
                wav_header(rate, len(p), extra_chunk=b.wav_extra_chunk, channels=b.channels)
                + p
                + b.wav_trailer
                for p in parts
            ]
        if payload == "wav_per_request":
            data_size = len(pcm) if b.wav_trailer else 0xFFFFFFFF
            if b.wav_claimed_size is not None:
                data_size = b.wav_claimed_size
            header = wav_header(rate, data_size, extra_chunk=b.wav_extra_chunk, channels=b.channels)
            stream = header + pcm + b.wav_trailer
            return [stream[i : i + size] for i in range(0, len(stream), size)]
        return parts

    def _corrupted(self, payloads: list[bytes]) -> list[bytes]:
        index = self.behavior.corrupt_payload
        if cut := self.behavior.truncate_last_payload:
            payloads = [*payloads[:-1], payloads[-1][:-cut]]
        if index is None or index >= len(payloads):
            return payloads
        damaged = bytearray(payloads[index])
        damaged[len(damaged) // 2] ^= 0x40
        return [*payloads[:index], bytes(damaged), *payloads[index + 1 :]]

    async def _send_audio(
        self,
        ws: web.WebSocketResponse,
        v1: bool,
        request_id: str,
        data: bytes,
        *,
        rate: int,
        seq: int,
    ) -> None:
        b = self.behavior
        binary = b.transport == "binary" or (b.transport == "auto" and v1)
        if binary and v1:
            out = protocol.encode_server_message(
                protocol.Audio(
                    request_id=request_id if b.tag_messages else None,
                    data=data,
                    sample_rate=rate if b.stated_sample_rate else None,
                    sequence=seq,
                )
            )
            assert isinstance(out, bytes)
            await ws.send_bytes(out)
        elif binary:
            await ws.send_bytes(data)  # legacy: bare audio, no request id
        else:
            fields: dict[str, Any] = {
                "type": "audio",
                b.audio_field: base64.b64encode(data).decode(),
            }
            if b.stated_sample_rate:
                fields["sample_rate"] = rate
            await self._send(ws, v1, fields, request_id)

    async def _send(
        self, ws: web.WebSocketResponse, v1: bool, fields: dict[str, Any], request_id: str
    ) -> None:
        if self.behavior.tag_messages:
            fields = {**fields, "request_id": request_id}
        await ws.send_str(json.dumps(fields))


def _timings(text: str) -> list[dict[str, Any]]:
    words, t = [], 0.0
    for word in text.split():
        duration = SECONDS_PER_CHAR * len(word)
        words.append(
            {"word": word.strip(".,!?"), "start": round(t, 4), "end": round(t + duration, 4)}
        )
        t += duration + SECONDS_PER_CHAR
    return words


async def _until_idle(ws: web.WebSocketResponse) -> AsyncIterator[WSMessage]:
    """The socket's messages until it closes or idles past its receive timeout."""
    while True:
        try:
            msg = await ws.receive()
        except TimeoutError:
            await ws.close(code=1001, message=b"idle")
            return
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return
        yield msg


def _forget(running: dict[str, asyncio.Task[None]], request_id: str, _: object) -> None:
    running.pop(request_id, None)


def _opus_pages(pcm: bytes, rate: int, chunk_bytes: int) -> list[bytes]:
    """``pcm`` as one Ogg Opus stream, one payload per ``chunk_bytes`` of PCM."""
    encoder = formats.new_encoder("opus", sample_rate=rate)
    parts = [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]
    payloads = [encoder.encode(part, last=n == len(parts) - 1) for n, part in enumerate(parts)]
    return [p for p in payloads if p]
