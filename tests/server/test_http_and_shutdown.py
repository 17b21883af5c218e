"""HTTP endpoints (/health, /v1/voices, /metrics) and graceful shutdown."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

import knowlithic_protocol as protocol

from .helpers import Client, Connect, RunningServer, StartServer

LONG_TEXT = "This sentence keeps the server busy for a little while. " * 30


async def test_health(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url("/health")) as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ok"
    assert set(body["voices"]) == {"joe", "elise"}
    assert body["active_requests"] == 0 and body["workers"] == 2


async def test_voices(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url("/v1/voices")) as response:
        assert response.status == 200
        voices = await response.json()
    assert voices == [
        {
            "name": "joe",
            "sample_rate": 22050,
            "aliases": ["elise"],
            "language": "en_US",
            "word_timestamps": "estimated",
            "bundled": True,
        }
    ]


async def test_metrics(
    server: RunningServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    client = await connect()
    assert (await client.run("Hello there, how are you?")).completed
    assert isinstance((await client.run("Hi.", voice="nobody", request_id="x")).terminal,
                      protocol.Error)  # fmt: skip
    async with http.get(server.url("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["knowlithic_tts_time_to_first_audio_seconds_count"] == 1.0
    assert 0 < samples["knowlithic_tts_time_to_first_audio_seconds_sum"] < 2.0
    assert samples["knowlithic_tts_real_time_factor_count"] == 1.0
    assert 0 < samples["knowlithic_tts_real_time_factor_sum"] < 1.0
    assert samples["knowlithic_tts_active_connections"] == 1.0
    assert samples["knowlithic_tts_active_requests"] == 0.0
    assert samples['knowlithic_tts_errors_total{code="unknown_voice"}'] == 1.0
    assert samples['knowlithic_tts_requests_total{outcome="complete"}'] == 1.0
    assert samples["knowlithic_tts_audio_seconds_total"] > 1.0


async def _read_until_closed(client: Client) -> list[protocol.ServerMessage]:
    messages = []
    while True:
        message = await client.ws.receive(timeout=30)
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            msg = protocol.decode_server_message(message.data, tagged_binary=True)
            client._dispatch(msg)
            messages.append(msg)
        else:
            return messages


async def test_shutdown_lets_in_flight_requests_finish_then_closes_with_1001(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(shutdown_grace=20.0)
    client = await connect(target=server)
    await client.request("A request that is in flight when the server is told to stop. " * 3)
    client._dispatch(await client.receive())  # first audio: it is in flight
    closing = asyncio.create_task(server.stop())
    await asyncio.sleep(0.05)
    # new work on the open connection is refused while draining
    await client.request("Too late.", request_id="late")
    # and nobody new gets in
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.ws_connect(server.ws_url)
    await _read_until_closed(client)
    await closing
    assert client.results["r1"].completed
    late = client.results["late"].terminal
    assert isinstance(late, protocol.Error) and late.code == protocol.ERR_SHUTTING_DOWN
    assert client.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY


async def test_shutdown_cancels_what_outlives_the_grace_period(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(shutdown_grace=0.3)
    client = await connect(target=server)
    await client.request(LONG_TEXT)
    client._dispatch(await client.receive())
    started = time.perf_counter()
    await asyncio.gather(server.stop(), _read_until_closed(client))
    assert time.perf_counter() - started < 3.0
    terminal = client.results["r1"].terminal
    assert isinstance(terminal, protocol.Error)
    assert terminal.code == protocol.ERR_SHUTTING_DOWN and terminal.retryable
    assert client.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    assert client.results["r1"].after_terminal == []
