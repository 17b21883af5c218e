"""Hostile servers and clients on the HTTP path, through real sockets: each test injects one
fault an attacker (or a broken proxy) would, and checks that it stays contained."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from livekit.agents import APIConnectOptions, APIStatusError

import knowlithic_protocol as protocol
from tests.plugin_helpers import speak
from tts_custom import http_speech
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
