"""POST /v1/audio/speech against hostile clients, through raw sockets: each test injects one
fault and checks the server stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import pytest

import knowlithic_protocol as protocol
from knowlithic_protocol.http import STREAM_HEADER
from tts_server import http_speech

from .helpers import RunningServer, StartServer
from .test_openai_speech import LONG, Gate, gate_server, idle, post, until

__all__ = ["gate_server"]  # a fixture, shared

SPEECH = "/v1/audio/speech"


async def _raw(server: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(server.http_url)
    assert url.hostname is not None and url.port is not None
    return await asyncio.open_connection(url.hostname, url.port)


async def test_a_body_sent_byte_by_byte_is_dropped_after_the_read_timeout(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_speech, "READ_BODY_TIMEOUT", 0.3)
    reader, writer = await _raw(server)
    body = b'{"input": "Hi.", "response_format": "pcm"}'
    writer.write(
        b"POST " + SPEECH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body[:3]
    )
    await writer.drain()
    try:
        # a slowloris: a byte now and then, never the whole body
        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in body[3:-1]:
                    await asyncio.sleep(0.1)
                    writer.write(bytes([byte]))
                    await writer.drain()

        trickling = asyncio.create_task(trickle())
        status = await asyncio.wait_for(reader.readline(), timeout=3.0)
        trickling.cancel()
        assert status.startswith(b"HTTP/1.1 408"), status
    finally:
        writer.close()


async def test_json_with_a_charset_parameter_is_accepted(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        server.url(SPEECH),
        data=b'{"input": "Hi.", "response_format": "pcm"}',
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    ) as response:
        assert response.status == 200 and await response.read()


async def test_an_endless_chunked_body_is_413_not_read_forever(server: RunningServer) -> None:
    reader, writer = await _raw(server)
    writer.write(
        b"POST " + SPEECH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * 65536
    try:
        for _ in range(40):  # 2.5 MiB of whitespace: past any body the server takes
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            try:
                await asyncio.wait_for(writer.drain(), timeout=2.0)
            except (ConnectionError, TimeoutError):
                break
        status = await asyncio.wait_for(reader.readline(), timeout=3.0)
        assert status.startswith(b"HTTP/1.1 413"), status
    finally:
        writer.close()


async def test_one_admitted_x_stream_id_cannot_carry_unbounded_requests_past_the_caps(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    gate_server: Callable[[RunningServer], Gate],
) -> None:
    # An admitted reply's later sentences skip the capacity check (they always have a place):
    # naming one reply in many concurrent requests must not turn that into unlimited places.
    server = await start_server(max_streams=1, max_requests_per_connection=2)
    gate = gate_server(server)
    headers = {STREAM_HEADER: "reply-1"}
    body = {"input": LONG, "response_format": "pcm"}
    async with http.post(server.url(SPEECH), json=body, headers=headers) as first:
        assert first.status == 200
        await first.content.readany()  # admitted, and held at its second segment
        piggybacks = [
            asyncio.create_task(post(http, server, body, headers=headers)) for _ in range(6)
        ]
        done, pending = await asyncio.wait(piggybacks, timeout=3.0)
        refused = [t.result() for t in done]
        assert len(refused) >= 5, "every request of the reply was admitted past the caps"
        for status, response_headers, data in refused:
            assert status == 503 and int(response_headers["Retry-After"]) >= 1
            error = json.loads(data)["error"]
            assert error["code"] == protocol.ERR_TOO_MANY_REQUESTS
            assert "in flight on this reply" in error["message"]
        gate.opened.set()
        await first.read()
        await asyncio.gather(*pending)


async def test_a_client_gone_before_the_headers_gives_its_place_back(
    start_server: StartServer, gate_server: Callable[[RunningServer], Gate]
) -> None:
    server = await start_server(max_streams=2)
    gate = gate_server(server)
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url(SPEECH), json={"input": LONG, "response_format": "pcm"}) as first,
    ):
        await first.content.readany()  # the gate's one segment: the rest waits
        _reader, writer = await _raw(server)
        body = b'{"input": "Held before its first audio.", "response_format": "pcm"}'
        writer.write(
            b"POST " + SPEECH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        await until(lambda: server.state.capacity.in_use == 2, timeout=3.0)
        writer.close()  # gone before any header came back
        await until(lambda: server.state.capacity.in_use == 1, timeout=3.0)
        assert len(server.state.speeches) == 1
        gate.opened.set()
        await first.read()
    await until(lambda: idle(server.state), timeout=5.0)


async def test_another_client_naming_an_admitted_x_stream_id_is_not_admitted_with_it(
    start_server: StartServer, gate_server: Callable[[RunningServer], Gate]
) -> None:
    server = await start_server(max_streams=1)
    gate = gate_server(server)
    headers = {STREAM_HEADER: "reply-1"}
    body = {"input": LONG, "response_format": "pcm"}
    other_host = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=other_host) as other,
        http.post(server.url(SPEECH), json=body, headers=headers) as first,
    ):
        assert first.status == 200
        await first.content.readany()  # admitted, and held at its second segment
        status, _, data = await post(other, server, body, headers=headers)
        assert status == 503 and json.loads(data)["error"]["code"] == protocol.ERR_BUSY
        gate.opened.set()
        await first.read()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"input": "Hi.", "speed": NaN}', "speed"),
        (b'{"input": "Hi.", "speed": Infinity}', "speed"),
        (b'{"input": "Hi.", "speed": true}', "speed"),
        (b'{"input": "Hi.", "sample_rate": true}', "sample_rate"),
        (b'{"input": "Hi.", "bitrate": 1e400}', "bitrate"),
        (b'{"input": "Hi.", "voice": "\\u0000\\u001b[31m"}', "voice"),
        (b'{"input": "\\udc80"}', "input"),
        (b'{"input": "\xff\xfe Hi."}', None),
        (b"[" * 200_000 + b"]" * 200_000, None),
        (b'{"input": "Hi.", "input": 5}', "input"),  # the last of duplicate keys counts
    ],
)
async def test_hostile_bodies_are_400s_naming_the_field(
    server: RunningServer,
    http: aiohttp.ClientSession,
    body: bytes,
    param: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with http.post(
        server.url(SPEECH), data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == param
    assert "\x1b" not in error["message"] and "\x1b" not in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
async def test_other_methods_on_the_speech_route_are_405(
    start_server: StartServer, http: aiohttp.ClientSession, method: str
) -> None:
    server = await start_server(api_key="k3y")
    async with http.request(method, server.url(SPEECH)) as response:
        assert response.status == 405
        assert "k3y" not in await response.text()
    assert server.state.capacity.in_use == 0
