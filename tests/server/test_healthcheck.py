"""The container's liveness check (``python -m tts_server.healthcheck``) against the real server:
a busy server is alive (not restarted), one that does not answer is not."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from tts_server.healthcheck import alive, main

from .helpers import Connect, RunningServer, StartServer


async def check(url: str) -> bool:
    # urllib blocks: off the loop that serves the server under test
    return await asyncio.to_thread(alive, url, 5.0)


async def test_a_ready_server_is_alive(server: RunningServer) -> None:
    assert await check(server.url("/health"))


async def test_a_busy_server_is_alive_but_not_ready(
    start_server: StartServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    server = await start_server(max_streams=1, stream_idle_window=30.0)
    client = await connect(target=server)
    # the reply keeps its place for the idle window: the one place is taken
    assert (await client.run("Hello there.", request_id="a", stream_id="s")).completed
    async with http.get(server.url("/health")) as response:
        assert response.status == 503 and (await response.json())["status"] == "busy"
    assert await check(server.url("/health"))


async def test_an_answer_that_is_not_health_is_not_alive(server: RunningServer) -> None:
    assert not await check(server.url("/v1/voices"))  # JSON, but a list of voices


async def test_no_server_is_not_alive() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/health"
    assert await asyncio.to_thread(main, ["--url", url, "--timeout", "2"]) == 1
