"""Fixtures: the real server (real Piper) on 127.0.0.1 with an ephemeral port, and clients.

The voice is loaded once per test session (seconds); each test gets its own app, so limits
and metrics never leak between tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import knowlithic_protocol as protocol
from tts_server.app import create_app
from tts_server.engines import Engine, load_engine
from tts_server.httplog import runner_options

from .helpers import BASE_CONFIG, Client, Connect, RunningServer, StartServer

_ENGINE_SETTINGS = frozenset(
    {"engine", "voices", "noise_scale", "noise_w", "length_scale", "loudness_dbfs", "onnx_threads"}
)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    eng = load_engine(BASE_CONFIG)
    yield eng
    eng.close()


@pytest.fixture
async def start_server(engine: Engine) -> AsyncIterator[StartServer]:
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> RunningServer:
        config = replace(BASE_CONFIG, **overrides)
        # the shared engine was loaded with BASE_CONFIG's voices and synthesis settings: a
        # server with other ones loads its own
        own_engine = overrides.keys() & _ENGINE_SETTINGS
        server = TestServer(create_app(config, None if own_engine else engine), host="127.0.0.1")
        await server.start_server(**runner_options())  # logs as `python -m tts_server` does
        servers.append(server)
        return RunningServer(server, config)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def connect(server: RunningServer, http: aiohttp.ClientSession) -> AsyncIterator[Connect]:
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def open_client(
        *,
        target: RunningServer | None = None,
        legacy: bool = False,
        headers: dict[str, str] | None = None,
        path: str = "/",
    ) -> Client:
        running = target or server
        ws = await http.ws_connect(
            running.url(path),
            protocols=() if legacy else (protocol.SUBPROTOCOL,),
            headers=headers,
        )
        sockets.append(ws)
        client = Client(ws, tagged=not legacy)
        if not legacy:
            first = await client.receive()
            assert isinstance(first, protocol.Capabilities)
            client.capabilities = first
        return client

    yield open_client
    for ws in sockets:
        await ws.close()
