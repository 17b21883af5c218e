"""A Knowlithic-protocol server for benchmarks: stamped audio, no synthesis cost.

    python -m bench.stamp_server --port 0 --chunks 10 --chunk-ms 40

It answers every ``text_to_speech`` with ``--chunks`` binary audio messages of ``--chunk-ms``
each, and writes one line per message to standard output: ``<request_id> <sequence>
<monotonic_ns>``, the moment just before the message was written to the socket (sequence
``-1``: the moment the request was read).  CLOCK_MONOTONIC
is shared by all processes on the machine, so a client in another process can subtract it from
its own receive times.  ``--first-ms`` delays the first message, like a real server's time to
first audio.  The first line of output is ``port <n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiohttp import WSMsgType, web

import knowlithic_protocol as protocol

_HEADER = struct.Struct(">H")


@dataclass
class StampLog:
    sent: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    order: list[str] = field(default_factory=list)

    received: dict[str, int] = field(default_factory=dict)

    def add(self, line: str) -> None:
        request_id, seq, ns = line.split()
        if seq == "-1":
            self.received[request_id] = int(ns)
            self.order.append(request_id)
        else:
            self.sent[request_id].append(int(ns))

    def server_ttfa(self, request_id: str) -> float:
        """The server's own time to first audio for a request, in ms."""
        return (self.sent[request_id][0] - self.received[request_id]) / 1e6


@asynccontextmanager
async def stamp_server(*args: str) -> AsyncIterator[tuple[str, StampLog]]:
    """Run bench/stamp_server.py in its own process; yield its URL and its send log."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.stamp_server", *args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    first = (await proc.stdout.readline()).decode().split()
    log = StampLog()

    async def read_log() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            log.add(line.decode())

    reader = asyncio.create_task(read_log())
    try:
        yield f"ws://127.0.0.1:{first[1]}", log
    finally:
        proc.terminate()
        await proc.wait()
        await reader


def pcm_for(sample_rate: int, milliseconds: int) -> bytes:
    samples = sample_rate * milliseconds // 1000
    rng = np.random.default_rng(samples)
    return rng.integers(-8000, 8000, size=samples, dtype=np.int16).astype("<i2").tobytes()


class StampServer:
    def __init__(self, *, chunks: int, chunk_ms: int, gap_ms: float, first_ms: float) -> None:
        self.chunks = chunks
        self.chunk_ms = chunk_ms
        self.gap = gap_ms / 1000
        self.first = first_ms / 1000
        self._log: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(protocol.SUBPROTOCOL,))
        await ws.prepare(request)
        tagged = ws.ws_protocol == protocol.SUBPROTOCOL
        if tagged:
            caps = protocol.Capabilities(
                protocol_version=protocol.PROTOCOL_VERSION,
                voices=("elise",),
                output_formats=protocol.OUTPUT_FORMATS,
                sample_rates=(8000, 16000, 22050, 24000, 44100, 48000),
            )
            await ws.send_str(str(protocol.encode_server_message(caps)))
        tasks: dict[str, asyncio.Task[None]] = {}
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            message = protocol.decode_client_message(msg.data)
            if isinstance(message, protocol.TextToSpeech):
                print(message.request_id, -1, time.monotonic_ns(), flush=False)
                tasks[message.request_id] = asyncio.create_task(self._answer(ws, message))
            elif isinstance(message, protocol.Cancel) and message.request_id in tasks:
                tasks.pop(message.request_id).cancel()
        return ws

    async def _answer(self, ws: web.WebSocketResponse, req: protocol.TextToSpeech) -> None:
        pcm = pcm_for(req.sample_rate, self.chunk_ms)
        await asyncio.sleep(self.first)
        for seq in range(self.chunks):
            now = time.monotonic_ns()
            header = json.dumps(
                {
                    "type": "audio",
                    "request_id": req.request_id,
                    "sample_rate": req.sample_rate,
                    "sequence": seq,
                    "sent_ns": now,
                }
            ).encode()
            await ws.send_bytes(_HEADER.pack(len(header)) + header + pcm)
            print(req.request_id, seq, now, flush=False)
            if self.gap:
                await asyncio.sleep(self.gap)
        sys.stdout.flush()
        done = protocol.encode_server_message(protocol.Complete(req.request_id))
        await ws.send_str(str(done))


def _tls() -> ssl.SSLContext:
    """A throwaway self-signed certificate for 127.0.0.1 (clients skip verification)."""
    directory = Path(tempfile.mkdtemp(prefix="stamp-tls-"))
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(args: argparse.Namespace) -> None:
    server = StampServer(
        chunks=args.chunks, chunk_ms=args.chunk_ms, gap_ms=args.gap_ms, first_ms=args.first_ms
    )
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=_tls() if args.tls else None)
    await site.start()
    print("port", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="stamped-audio benchmark server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--chunk-ms", type=int, default=40)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--first-ms", type=float, default=0.0)
    parser.add_argument("--tls", action="store_true", help="serve wss:// with a self-signed cert")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
