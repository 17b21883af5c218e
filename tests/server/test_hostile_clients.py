"""Clients that misbehave, on purpose or not: keys where they do not belong, sockets that are
never read, replies that hold places while costing nothing, the longest valid messages."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

import knowlithic_protocol as protocol
from tts_server.config import MAX_VOICE_LENGTH, min_message_size

from .helpers import Client, Connect, RunningServer, StartServer

KEY = "sk-live-7c0ffee7e57b0d1e5"
# Long enough that 32 of them keep the server busy for minutes: nothing ends on its own.
LONG_TEXT = "This long sentence keeps the server talking for a good while, on and on. " * 25


# -- a key in the request never reaches the log ----------------------------------------------


async def test_the_in_process_server_logs_access_without_the_key(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(api_key="the-real-key")
    caplog.set_level(logging.DEBUG)
    headers = {"Referer": f"https://app.example/?api_key={KEY}", "User-Agent": f"bot {KEY}",
               "Cookie": f"key={KEY}", "X-API-Key": KEY}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        for path in (f"/?api_key={KEY}", f"/v1/tts/{KEY}?key={KEY}"):
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(server.url(path), headers=headers)
        async with http.get(server.url(f"/health?api_key={KEY}"), headers=headers) as response:
            assert response.status == 200
    # Bytes that do not parse: aiohttp reports them, request line and all, unless told not to.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
    writer.write(f"GET /?api_key={KEY} HTTP/1.1\r\nHost: x\r\nX-Bad: \x01{KEY}\r\n\r\n".encode())
    await reader.read()
    writer.close()
    await asyncio.sleep(0.1)
    assert KEY not in caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any('"GET /" 401' in line for line in access), access
    assert any('"GET /health" 200' in line for line in access), access
    assert any('"GET -" 404' in line for line in access), access  # the path is not echoed
    assert "malformed HTTP request from 127.0.0.1: BadHttpMessage (HTTP 400)" in caplog.text
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


# -- a client that stops reading gives its places back -----------------------------------------


def _client_frame(payload: str) -> bytes:
    """One masked text frame, as a client must send it."""
    data = payload.encode()
    mask = os.urandom(4)
    if len(data) < 126:
        head = struct.pack("!BB", 0x81, 0x80 | len(data))
    elif len(data) < 1 << 16:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, len(data))
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, len(data))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def stalled_reader(port: int, name: str, requests: int = 8) -> socket.socket:
    """A WebSocket client that sends long requests and never reads another byte.

    A small receive buffer, as a hung client's would be before it ever read much: the kernel
    holds little for it, so what piles up is the server's.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {protocol.SUBPROTOCOL}\r\n\r\n"
    )
    await loop.sock_sendall(sock, handshake.encode())
    response = b""
    while b"\r\n\r\n" not in response:  # byte by byte: nothing after the headers is read
        response += await loop.sock_recv(sock, 1)
    assert response.startswith(b"HTTP/1.1 101"), response
    for n in range(requests):
        request = protocol.TextToSpeech(f"{name}-{n}", LONG_TEXT, "joe", 48000, "pcm")
        await loop.sock_sendall(sock, _client_frame(protocol.encode_client_message(request)))
    return sock


async def health(http: aiohttp.ClientSession, server: RunningServer) -> tuple[int, str]:
    async with http.get(server.url("/health")) as response:
        return response.status, (await response.json())["status"]


async def test_clients_that_stop_reading_give_their_capacity_back_within_the_send_timeout(
    start_server: StartServer,
    connect: Connect,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The production heartbeat: without a send timeout it frees the places only after ~30 s.
    server = await start_server(heartbeat=20.0, max_requests=32)
    caplog.set_level(logging.INFO, logger="tts_server")
    started = time.monotonic()
    port = server.server.port
    assert port is not None
    sockets = [await stalled_reader(port, f"stalled{n}") for n in range(4)]
    try:
        while await health(http, server) != (503, "busy"):  # until all 32 are in flight
            assert time.monotonic() < started + 5.0, "the stalled requests never started"
            await asyncio.sleep(0.05)
        client = await connect(target=server)
        served = None
        # Held for ~31 s before the fix; here 5.4 s alone, 8 s with the machine twice as busy.
        deadline = started + server.config.send_timeout + 7.0
        n = 0
        while served is None and time.monotonic() < deadline:
            n += 1
            result = await client.run("Hello there.", request_id=f"fresh{n}")
            if result.completed:
                served = time.monotonic() - started
            else:
                assert isinstance(result.terminal, protocol.Error)
                assert result.terminal.code == protocol.ERR_BUSY
                await asyncio.sleep(0.25)
        assert served is not None, "the stalled clients still hold the server"
        assert await health(http, server) == (200, "ok")
        # Every stalled request is gone soon after, whichever connection filled up last.
        while server.state.capacity.in_use > 0:
            assert time.monotonic() < deadline + 5.0, server.state.capacity.in_use
            await asyncio.sleep(0.1)
        freed = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    dropped = [r.getMessage() for r in caplog.records if "stopped reading" in r.getMessage()]
    assert len(dropped) == 4, dropped  # one line per connection, and no text in it
    assert "server talking" not in caplog.text
    print(
        f"four readers stalled: a fresh client served after {served:.1f} s, all freed {freed:.1f} s"
    )


# -- idle replies do not hold the places of real ones --------------------------------------------


async def _read_forever(client: Client) -> None:
    while True:
        client._dispatch(await client.receive(timeout=60))


@pytest.fixture
async def attacker(start_server: StartServer, connect: Connect) -> AsyncIterator[RunningServer]:
    """A server whose 8 places a client keeps busy with "Hi." every 1.5 s on 8 stream ids.

    That is 5.3 requests a second, under the rate limit, and every stream is back before its
    2 s idle window ends.
    """
    server = await start_server(max_streams=8, stream_idle_window=2.0)
    client = await connect(target=server)

    async def cycle() -> None:
        for n in range(1_000):
            stream = n % 8
            request = protocol.TextToSpeech(f"hi{n}", "Hi.", "joe", 16000, "pcm", False,
                                            f"idle{stream}")  # fmt: skip
            await client.send(request)
            await asyncio.sleep(1.5 / 8)

    tasks = [asyncio.create_task(cycle()), asyncio.create_task(_read_forever(client))]
    await asyncio.sleep(2.5)  # every stream has been admitted and asked again
    yield server
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The attacker was never refused either: its streams came back as new replies.
    refused = [r for r in client.results.values() if r.terminal and not r.completed]
    assert refused == []


async def test_idle_replies_yield_their_places_to_real_ones(
    attacker: RunningServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    statuses = [await health(http, attacker)]
    client = await connect(target=attacker)
    replies = (
        ("Sure, I can help you with that booking right away.", "The table is for two."),
        ("Your order has shipped.", "It should arrive on Tuesday.", "Anything else?"),
        ("Thanks for calling.", "Goodbye!"),
    )
    for n, reply in enumerate(replies):
        for m, sentence in enumerate(reply):  # the next sentence once the last is synthesized
            result = await client.run(sentence, request_id=f"r{n}-{m}", stream_id=f"reply{n}")
            assert result.completed, (n, m, result.terminal)
            assert len(result.data) > 8000  # a quarter of a second of speech at least
            statuses.append(await health(http, attacker))
        await asyncio.sleep(0.5)
    assert statuses == [(200, "ok")] * len(statuses)  # never pulled from a load balancer


# -- the longest valid request fits the documented message size ----------------------------------


def _escaped(value: str) -> str:
    """A JSON string with every character escaped: 6 bytes each, 12 outside the BMP."""
    units = value.encode("utf-16-be")
    return (
        '"'
        + "".join(
            f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)
        )
        + '"'
    )


def _longest_request(text: str, request_id: str, voice: str, stream_id: str) -> str:
    fields = {
        "type": _escaped("text_to_speech"),
        "request_id": _escaped(request_id),
        "text": _escaped(text),
        "voice": _escaped(voice),
        "sample_rate": "48000",
        "output_format": _escaped("wav"),
        "word_timestamps": "false",
        "stream_id": _escaped(stream_id),
    }
    return "{" + ",".join(f"{_escaped(k)}:{v}" for k, v in fields.items()) + "}"


ASTRAL = "\U0001f600"  # outside the BMP: one character, a 12-byte surrogate pair in JSON
LONGEST_ID = ASTRAL * protocol.MAX_REQUEST_ID_LENGTH
LONGEST_VOICE = "\U0001f3a4" * MAX_VOICE_LENGTH  # an alias of joe, at the bound for names


async def test_the_longest_valid_request_fits_the_minimum_message_size(
    start_server: StartServer, connect: Connect
) -> None:
    limit = 5000  # the default text length
    minimum = min_message_size(limit)
    server = await start_server(
        max_text_length=limit, max_message_size=minimum, aliases=((LONGEST_VOICE, "joe"),)
    )
    frame = _longest_request(ASTRAL * limit, LONGEST_ID, LONGEST_VOICE, LONGEST_ID)
    assert json.loads(frame)["text"] == ASTRAL * limit
    padded = frame[:-1] + " " * (minimum - len(frame)) + "}"  # whitespace up to the bound
    assert len(padded.encode()) == minimum
    client = await connect(target=server)
    await client.send_raw(padded)
    answer = await client.receive()  # nothing to say in emoji: complete at once, no audio
    assert answer == protocol.Complete(LONGEST_ID), answer
    # One character over the limit, in a message that still fits: text_too_long, not 1009.
    over = await client.run(ASTRAL * (limit + 1), request_id="over")
    assert isinstance(over.terminal, protocol.Error)
    assert over.terminal.code == protocol.ERR_TEXT_TOO_LONG
    assert (await client.run("Still here.", request_id="after")).completed
    # A byte more than the flag allows closes the connection, as documented.
    other = await connect(target=server)
    await other.send_raw(padded[:-1] + " }")
    message = await other.ws.receive(timeout=10)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert other.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_numeric_ids_and_voices_are_bounded_like_the_other_fields(
    connect: Connect,
) -> None:
    client = await connect()
    # A numeric request id decodes to all its digits: it would be echoed on every message.
    long_id = int("9" * 200)
    message = {"type": "text_to_speech", "request_id": long_id, "text": "Hi.", "voice": "joe",
               "sample_rate": 16000}  # fmt: skip
    await client.send_raw(json.dumps(message))
    refused = await client.receive()
    assert isinstance(refused, protocol.Error) and refused.request_id is None
    assert refused.code == protocol.ERR_BAD_REQUEST
    # A voice name is stripped before it is looked up: padding must not make it unbounded.
    padded = await client.run("Hi.", voice="joe" + " " * MAX_VOICE_LENGTH, request_id="pad")
    assert isinstance(padded.terminal, protocol.Error)
    assert padded.terminal.code == protocol.ERR_BAD_REQUEST
    assert (await client.run("Hi.", voice=" JOE ", request_id="ok")).completed
