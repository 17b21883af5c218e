"""Hostile servers and clients on the HTTP path, through real sockets: each test injects one
fault an attacker (or a broken proxy) would, and checks that it stays contained."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from livekit.agents import APIConnectOptions, APIError, APIStatusError

import knowlithic_protocol as protocol
from tests.fake_http import FakeHttpServer, HttpBehavior
from tests.plugin_helpers import speak
from tts_custom import http_speech, http_transport
from tts_custom.knowlithictts import TTS

NO_RETRY = APIConnectOptions(max_retry=0, timeout=1.0)
SECRET = "sk-attack-5d1e0b9c"


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, handler: Any) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def elsewhere() -> AsyncIterator[_Recorder]:
    """Another host (origin): it must never see a request meant for the TTS server."""
    rec = _Recorder()

    async def record(request: web.Request) -> web.StreamResponse:
        rec.requests.append(
            (request.method, request.path, dict(request.headers), await request.read())
        )
        return web.Response(body=b"\0\0" * 2400, content_type="audio/pcm")

    await rec.start(record)
    yield rec
    await rec.stop()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_of_a_speech_request_is_not_followed_with_the_text(
    elsewhere: _Recorder, status: int
) -> None:
    server = _Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            await request.read()
            return web.Response(status=status, headers={"Location": elsewhere.url + request.path})
        return web.json_response({"object": "list", "data": []})  # the probe

    await server.start(handler)
    tts = TTS(base_url=server.url, transport="http", api_key=SECRET)
    try:
        with pytest.raises(APIStatusError) as info:
            await speak(tts, "A private sentence for this server only.", conn_options=NO_RETRY)
        assert not info.value.retryable and "redirects" in info.value.message
        assert SECRET not in info.value.message
    finally:
        await tts.aclose()
        await server.stop()
    # neither the user's words nor the key reached the other host
    assert elsewhere.requests == []


@pytest.mark.parametrize("rate", ["\u00b2", "\u0663\u0663", "0", "1000000000", "-1", "abc"])
def test_a_hostile_sample_rate_header_is_refused_not_a_crash(rate: str) -> None:
    stream = http_speech.audio_stream(
        {"Content-Type": "audio/pcm", "X-Sample-Rate": rate}, "pcm", "r1"
    )
    assert (
        isinstance(stream, protocol.Error)
        or (
            stream.sample_rate is not None
            and protocol.MIN_SAMPLE_RATE <= stream.sample_rate <= protocol.MAX_SAMPLE_RATE
        )
        or (rate in ("abc", "-1") and stream.sample_rate == 24000)
    )
    if isinstance(stream, protocol.Error):
        assert not stream.retryable and stream.code == protocol.ERR_UNSUPPORTED


async def test_an_interruption_storm_reopens_a_bounded_number_of_connections() -> None:
    server = FakeHttpServer()
    await server.start()
    server.behavior = HttpBehavior(chunk_bytes=640, stall_after_chunks=1)
    try:
        async with aiohttp.ClientSession() as session:
            transport = await http_transport.connect(
                session, server.url, api_key=None, timeout=2.0, model="m", keep_warm=None
            )
            probes = server.received.probes
            for turn in range(5):  # barge-in after barge-in, each cutting 8 requests
                channels = []
                for i in range(8):
                    channel = await transport.open_request(f"t{turn}-{i}")
                    await channel.send(
                        protocol.TextToSpeech(
                            request_id=f"t{turn}-{i}",
                            text=f"Sentence {i} of turn {turn}.",
                            voice="v",
                            sample_rate=24000,
                            output_format="pcm",
                        )
                    )
                    channels.append(channel)
                for channel in channels:
                    await channel.answered.wait()
                for channel in channels:
                    channel.close()
                # at most as many reopens in flight as connections are kept warm
                assert len(transport._refills) <= transport.max_refills
            await asyncio.sleep(0.2)
            assert server.received.probes - probes <= 5 * transport.max_refills
            await transport.aclose()
    finally:
        await server.stop()


async def test_the_session_closing_under_a_reopen_leaves_no_failed_task() -> None:
    server = FakeHttpServer()
    await server.start()
    server.behavior = HttpBehavior(chunk_bytes=640, stall_after_chunks=1)
    failures: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    try:
        session = aiohttp.ClientSession()
        transport = await http_transport.connect(
            session, server.url, api_key=None, timeout=2.0, model="m", keep_warm=None
        )
        channel = await transport.open_request("r")
        await channel.send(
            protocol.TextToSpeech(request_id="r", text="A sentence.", voice="v", sample_rate=24000)
        )
        await channel.answered.wait()
        channel.close()  # a reopen starts...
        refills = set(transport._refills)
        await session.close()  # ...and the session closes under it
        await asyncio.gather(*refills, return_exceptions=True)
        assert all(t.cancelled() or t.exception() is None for t in refills)
        await transport.aclose()
    finally:
        loop.set_exception_handler(None)
        await server.stop()
    assert failures == []


@pytest.mark.parametrize("status", [400, 422, 500, 503])
async def test_a_server_echoing_the_key_in_its_error_never_gets_it_logged(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = _Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.json_response({"object": "list", "data": []})
        await request.read()
        echoed = request.headers.get("Authorization", "")
        error = {"message": f"bad request from {echoed}", "type": "x", "code": None}
        return web.json_response({"error": error}, status=status)

    await server.start(handler)
    tts = TTS(base_url=server.url, transport="http", api_key=SECRET)
    try:
        with pytest.raises(APIStatusError) as info:
            await speak(tts, "A sentence.", conn_options=NO_RETRY)
        assert "bad request from" in info.value.message  # the server's words are kept
    finally:
        await tts.aclose()
        await server.stop()
    for text in (str(info.value), repr(info.value), caplog.text):
        assert SECRET not in text


async def test_aclose_with_requests_in_flight_leaves_no_task_or_session_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = FakeHttpServer()
    await server.start()
    server.behavior = HttpBehavior(chunk_bytes=640, stall_after_chunks=1)
    failures: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    try:
        tts = TTS(base_url=server.url, transport="http")
        speaking = asyncio.create_task(
            speak(
                tts,
                "One sentence here. And another one. And a third one. And a fourth.",
                conn_options=APIConnectOptions(max_retry=0, timeout=5.0),
            )
        )
        for _ in range(200):
            if len(server.received.requests) >= 2:
                break
            await asyncio.sleep(0.01)
        await tts.aclose()
        speaking.cancel()
        await asyncio.gather(speaking, return_exceptions=True)
        await asyncio.sleep(0.1)
        leftovers = [
            t
            for t in asyncio.all_tasks()
            if t is not asyncio.current_task() and t.get_name().startswith("knowlithic")
        ]
        assert leftovers == []
    finally:
        loop.set_exception_handler(None)
        await server.stop()
    assert failures == []
    assert "Unclosed" not in caplog.text


@pytest.mark.parametrize(
    ("shape", "plays"),
    [("gzip", True), ("html", False), ("closed_after_headers", False), ("endless", True)],
)
async def test_odd_success_answers_play_or_fail_cleanly(shape: str, plays: bool) -> None:
    pcm = b"\x10\x00" * 24000  # half a second at 24 kHz

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.json_response({"object": "list", "data": []})
        await request.read()
        if shape == "gzip":
            return web.Response(
                body=gzip.compress(pcm),
                headers={"Content-Type": "audio/pcm; rate=24000", "Content-Encoding": "gzip"},
            )
        if shape == "html":
            return web.Response(text="<html>login</html>", content_type="text/html")
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if shape == "closed_after_headers":
            assert request.transport is not None
            request.transport.close()
            return response
        while True:  # endless: the client stops reading when it is done with it
            await response.write(pcm)
            await asyncio.sleep(0.05)

    server = _Recorder()
    await server.start(handler)
    tts = TTS(base_url=server.url, transport="http")
    try:
        if plays:
            spoken = await asyncio.wait_for(_first_audio(tts), timeout=5.0)
            assert spoken
        else:
            with pytest.raises(APIError):
                await speak(tts, "A sentence.", conn_options=NO_RETRY)
    finally:
        await tts.aclose()
        await server.stop()


async def _first_audio(tts: TTS) -> bool:
    async with tts.stream(conn_options=NO_RETRY) as stream:
        stream.push_text("A sentence.")
        stream.end_input()
        async for ev in stream:
            if ev.frame.samples_per_channel:
                return True
    return False


async def test_an_error_body_that_arrives_in_pieces_is_read_whole() -> None:
    error = {"error": {"message": "no voice 'zed' here", "type": "x", "code": "unknown_voice"}}
    raw = json.dumps(error).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.json_response({"object": "list", "data": []})
        await request.read()
        response = web.StreamResponse(status=400, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(raw), 7):  # as a slow proxy passes it on
            await response.write(raw[i : i + 7])
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    server = _Recorder()
    await server.start(handler)
    tts = TTS(base_url=server.url, transport="http")
    try:
        with pytest.raises(APIStatusError) as info:
            await speak(tts, "A sentence.", conn_options=NO_RETRY)
    finally:
        await tts.aclose()
        await server.stop()
    assert "no voice 'zed' here" in info.value.message
    assert info.value.status_code == 404  # unknown_voice, as over the WebSocket
