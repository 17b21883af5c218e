"""A local server speaking Deepgram's live-streaming protocol closely enough for its plugin.

    python -m tests.fake_deepgram --port 8765 [--api-key KEY]

``deepgram.STT(base_url="http://127.0.0.1:8765/v1/listen", api_key=KEY)`` then streams to it:
``/v1/listen`` takes the plugin's query parameters and ``Authorization: Token KEY``, binary
linear16 audio and the ``KeepAlive``, ``Finalize`` and ``CloseStream`` messages; it answers
with ``SpeechStarted``, interim and final ``Results`` (``speech_final`` at each end of
phrase), ``UtteranceEnd`` when ``utterance_end_ms`` is asked for, and ``Metadata`` on close.
The transcripts are real: pocketsphinx (``bench.call.sphinx_stt``) decodes the audio each
socket received, so audio that never arrived is never transcribed.

Faults, on the HTTP side of the same port:

* ``POST /control/drop``: every live socket is closed at the TCP level, with no close frame,
  as a load balancer or a crashed host does;
* ``POST /control/stall`` / ``POST /control/resume``: the live sockets stop (and restart)
  reading and answering, pings included, while their TCP connections stay open; new sockets
  are served, as when one Deepgram node hangs and the load balancer sends new ones elsewhere
  (``/control/stall?new=1``: new sockets hang too once open, until ``resume``);
* a kill is a real ``SIGKILL`` of this process: :class:`FakeDeepgramProcess`.

``GET /control/stats`` tells what each socket received and when (``time.time()``), so a test
can say which audio reached a recognizer and which was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import aiohttp
from aiohttp import WSMsgType, web
from livekit import rtc
from livekit.agents import stt

from bench.call.sphinx_stt import SpeechStream as SphinxStream
from bench.call.sphinx_stt import SphinxSTT
from tests.server_process import ServerProcess

logger = logging.getLogger("fake_deepgram")

# What the plugin always sends (livekit-plugins-deepgram 1.8.9, SpeechStream._connect_ws).
REQUIRED_PARAMS: Final = ("model", "language", "encoding", "sample_rate", "channels")
_SPARE_WORKERS: Final = 2  # a reconnect must not wait ~1.5 s for a decoder process to start


@dataclass
class Connection:
    """One /v1/listen socket, as /control/stats reports it."""

    id: int
    request_id: str
    opened_at: float
    params: dict[str, str]
    first_audio_at: float | None = None
    audio_bytes: int = 0
    keepalives: int = 0
    finalizes: int = 0
    close_stream: bool = False
    closed_at: float | None = None
    closed_by: str = ""  # "client", "drop", "close_stream"
    finals: list[str] = field(default_factory=list)  # transcripts, for tests only


class FakeDeepgram:
    def __init__(self, *, api_key: str) -> None:
        self._api_key = api_key
        self._stt = SphinxSTT()
        self._ids = itertools.count(1)
        self.connections: list[Connection] = []
        self._live: dict[int, web.Request] = {}
        self._running: dict[int, asyncio.Event] = {}  # per live socket: cleared while stalled
        self._stall_new = False  # new sockets hang once open

    async def warm_up(self) -> None:
        await self._stt.warm_up(_SPARE_WORKERS)

    async def aclose(self) -> None:
        await self._stt.aclose()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        app.router.add_get("/health", self._health)
        app.router.add_post("/control/drop", self._drop)
        app.router.add_post("/control/stall", self._stall)
        app.router.add_post("/control/resume", self._resume)
        app.router.add_get("/control/stats", self._stats)
        return app

    # --- control ------------------------------------------------------------

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _drop(self, _: web.Request) -> web.Response:
        dropped = list(self._live.items())
        for conn_id, request in dropped:
            self._record_close(conn_id, "drop")
            if request.transport is not None:
                request.transport.close()  # FIN with no WebSocket close frame
        return web.json_response({"dropped": len(dropped)})

    async def _stall(self, request: web.Request) -> web.Response:
        self._stall_new = request.query.get("new") == "1"
        for running in self._running.values():
            running.clear()
        return web.json_response({"stalled": len(self._running)})

    async def _resume(self, _: web.Request) -> web.Response:
        self._stall_new = False
        for running in self._running.values():
            running.set()
        return web.json_response({"resumed": len(self._running)})

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response({"connections": [asdict(c) for c in self.connections]})

    def _record_close(self, conn_id: int, how: str) -> None:
        conn = self.connections[conn_id - 1]
        if conn.closed_at is None:
            conn.closed_at = time.time()
            conn.closed_by = how
        self._live.pop(conn_id, None)
        self._running.pop(conn_id, None)

    # --- /v1/listen ---------------------------------------------------------

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Token {self._api_key}":
            raise web.HTTPUnauthorized(text='{"err_code":"INVALID_AUTH"}')
        params = dict(request.query)
        missing = [p for p in REQUIRED_PARAMS if p not in params]
        if missing or params["encoding"] != "linear16" or params["channels"] != "1":
            raise web.HTTPBadRequest(text=f'{{"err_code":"Bad Request","missing":{missing}}}')
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = Connection(
            id=next(self._ids),
            request_id=str(uuid.uuid4()),
            opened_at=time.time(),
            params=params,
        )
        self.connections.append(conn)
        self._live[conn.id] = request
        running = self._running[conn.id] = asyncio.Event()
        if not self._stall_new:
            running.set()
        session = _Session(ws, conn, self._stt.stream(), running)
        try:
            await session.run()
        finally:
            self._record_close(conn.id, "client")
        return ws


class _Session:
    """One socket: audio in, the recognizer's events out as Deepgram messages."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        conn: Connection,
        stream: SphinxStream,
        running: asyncio.Event,
    ) -> None:
        self._ws = ws
        self._conn = conn
        self._stream = stream
        self._running = running
        self._rate = int(conn.params["sample_rate"])
        self._vad_events = conn.params.get("vad_events") == "true"
        self._utterance_end = "utterance_end_ms" in conn.params
        self._interim = conn.params.get("interim_results", "true") == "true"
        self._odd = b""  # a sample split across two messages
        self._received = 0.0  # seconds of audio received, the clock of Results
        self._finalizing = False
        self._finalized_to = 0.0  # the end of the last final result, in seconds received

    async def run(self) -> None:
        answer = asyncio.create_task(self._answer())
        try:
            await self._read()
            self._stream.end_input()
            await answer  # every result owed, then Metadata, then a normal close
            await self._send(self._metadata())
            await self._ws.close()
        finally:
            answer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answer
            await self._stream.aclose()

    async def _read(self) -> None:
        while True:
            await self._running.wait()
            msg = await self._ws.receive()
            if msg.type == WSMsgType.BINARY:
                self._on_audio(msg.data)
            elif msg.type == WSMsgType.TEXT:
                kind = json.loads(msg.data).get("type")
                if kind == "KeepAlive":
                    self._conn.keepalives += 1
                elif kind == "Finalize":
                    self._conn.finalizes += 1
                    self._finalizing = True
                    self._stream.flush()
                elif kind == "CloseStream":
                    self._conn.close_stream = True
                    return
            else:  # closed by the client, or the socket is gone
                return

    def _on_audio(self, data: bytes) -> None:
        if self._conn.first_audio_at is None:
            self._conn.first_audio_at = time.time()
        self._conn.audio_bytes += len(data)
        data = self._odd + data
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        if whole:
            samples = whole // 2
            self._received += samples / self._rate
            self._stream.push_frame(rtc.AudioFrame(data[:whole], self._rate, 1, samples))

    async def _answer(self) -> None:
        async for ev in self._stream:
            await self._running.wait()
            if ev.type == stt.SpeechEventType.START_OF_SPEECH and self._vad_events:
                await self._send(
                    {"type": "SpeechStarted", "channel": [0], "timestamp": self._received}
                )
            elif ev.type == stt.SpeechEventType.INTERIM_TRANSCRIPT and self._interim:
                await self._send(self._results(ev.alternatives[0], is_final=False))
            elif ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                self._conn.finals.append(ev.alternatives[0].text)
                self._finalized_to = ev.alternatives[0].end_time
                await self._send(self._results(ev.alternatives[0], is_final=True))
            elif ev.type == stt.SpeechEventType.END_OF_SPEECH:
                # Deepgram marks the end of a phrase with speech_final on a final result;
                # it covers no more audio than the phrase's final did (the audio received
                # since may be the next phrase, which a client replaying from the end of
                # the last final must not skip)
                empty = stt.SpeechData(
                    language=ev.alternatives[0].language if ev.alternatives else "en",  # type: ignore[arg-type]
                    text="",
                    start_time=self._finalized_to,
                    end_time=self._finalized_to,
                )
                await self._send(self._results(empty, is_final=True, speech_final=True))
                if self._utterance_end:
                    await self._send(
                        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": self._received}
                    )

    def _results(
        self, alt: stt.SpeechData, *, is_final: bool, speech_final: bool = False
    ) -> dict[str, Any]:
        words = alt.text.split()
        span = max(alt.end_time - alt.start_time, 0.0)
        step = span / len(words) if words else 0.0
        from_finalize = is_final and self._finalizing
        if is_final:
            self._finalizing = False
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": span,
            "start": alt.start_time,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": alt.text,
                        "confidence": alt.confidence,
                        "words": [
                            {
                                "word": w.lower(),
                                "punctuated_word": w,
                                "start": alt.start_time + i * step,
                                "end": alt.start_time + (i + 1) * step,
                                "confidence": alt.confidence,
                            }
                            for i, w in enumerate(words)
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self._conn.request_id,
                "model_uuid": "00000000-0000-0000-0000-000000000000",
                "model_info": {"name": "pocketsphinx", "version": "fake", "arch": "fake"},
            },
        }

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self._conn.request_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "duration": self._received,
            "channels": 1,
            "models": [],
            "model_info": {},
        }

    async def _send(self, message: dict[str, Any]) -> None:
        if not self._ws.closed:
            with contextlib.suppress(ConnectionError):  # the socket was dropped under us
                await self._ws.send_str(json.dumps(message))


class FakeDeepgramProcess(ServerProcess):
    """The fake as a process of its own, to kill with SIGKILL and start again on its port."""

    def __init__(self, *, api_key: str = "fake-key", port: int | None = None) -> None:
        super().__init__("--api-key", api_key, port=port, module="tests.fake_deepgram")
        self.api_key = api_key

    @property
    def listen_url(self) -> str:
        return f"{self.http_url}/v1/listen"

    async def control(self, action: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            if action == "stats":
                async with http.get(f"{self.http_url}/control/stats") as r:
                    result: dict[str, Any] = await r.json()
            else:
                async with http.post(f"{self.http_url}/control/{action}") as r:
                    result = await r.json()
        return result

    async def connections(self) -> list[Connection]:
        return [Connection(**c) for c in (await self.control("stats"))["connections"]]


async def _serve(host: str, port: int, api_key: str) -> None:
    fake = FakeDeepgram(api_key=api_key)
    await fake.warm_up()  # before listening: "listening" means "can transcribe at once"
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("fake Deepgram listening on %s:%d", host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await fake.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", default="fake-key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.api_key))


if __name__ == "__main__":
    main()
