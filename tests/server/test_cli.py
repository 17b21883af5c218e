"""``python -m tts_server`` as a real process: help, serving on localhost, SIGTERM, logs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

import knowlithic_protocol as protocol
from tests.loopback import free_port
from tests.server_process import ServerProcess
from tts_server.config import load_config, min_message_size

from .helpers import Client

REPO = Path(__file__).resolve().parents[2]
SECRET_TEXT = "Zanzibar pelicans juggle umbrellas."


def test_help_explains_flags_and_environment_variables() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tts_server", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for needle in ("--port", "KNOWLITHIC_PORT", "--voice-alias", "KNOWLITHIC_VOICE_ALIASES",
                   "--api-key", "KNOWLITHIC_API_KEY", "--workers", "--rate-limit",
                   "--shutdown-grace", "--max-requests"):  # fmt: skip
        assert needle in done.stdout, needle


async def test_serves_ws_localhost_and_stops_cleanly_on_sigterm() -> None:
    server = ServerProcess(host="localhost", env={"KNOWLITHIC_LOG_LEVEL": "DEBUG"})
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            # the plugin's default URL shape, with its default voice name
            ws = await http.ws_connect(server.url, protocols=(protocol.SUBPROTOCOL,))
            client = Client(ws, tagged=True)
            assert isinstance(await client.receive(), protocol.Capabilities)
            assert (await client.run(SECRET_TEXT, voice="elise")).completed
            await ws.close()
        assert await server.terminate() == 0, server.log
    finally:
        await server.stop()
    assert "listening on" in server.log and "stopped" in server.log
    # Not even at DEBUG does the spoken text reach the log.
    assert "Zanzibar" not in server.log and "pelican" not in server.log


async def test_a_key_sent_anywhere_in_a_request_never_reaches_the_log() -> None:
    key = "sk-live-0ddba11c0ffee"
    server = ServerProcess("--log-level", "INFO", env={"KNOWLITHIC_API_KEY": key})
    await server.start()
    headers = {"Referer": f"https://app.example/?api_key={key}", "User-Agent": f"bot/{key}",
               "Cookie": f"api_key={key}"}  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.http_url}/health?api_key={key}") as response:
                assert response.status == 200
            # The key in the query, in the path, in headers that are not for keys: refused.
            for path in (f"/?api_key={key}", f"/v1/tts/{key}"):
                try:
                    await http.ws_connect(server.url + path, headers=headers)
                except aiohttp.WSServerHandshakeError as e:
                    assert e.status in (401, 404)
                else:
                    raise AssertionError(f"{path} was accepted")
            # And where it belongs: accepted, and not logged either.
            ws = await http.ws_connect(server.url, headers={"Authorization": f"Bearer {key}"})
            await ws.close()
        # Bytes aiohttp cannot parse: it used to log them, key and all, at ERROR.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /?api_key={key} HTTP/1.1\r\nHost: x\r\nX: \x01{key}\r\n\r\n".encode())
        await reader.read()
        writer.close()
        await asyncio.sleep(0.2)
        assert await server.terminate() == 0
    finally:
        await server.stop()
    log = server.log
    assert key not in log, log
    assert '"GET /" 401' in log and '"GET /health" 200' in log  # the access lines are there
    assert "malformed HTTP request from 127.0.0.1" in log
    assert " ERROR " not in log, log


def test_a_message_size_below_the_longest_valid_request_refuses_to_start() -> None:
    # 4 x 5000 + 1 KiB: the rule the docs used to give, short of 12 bytes a character.
    done = subprocess.run(
        [sys.executable, "-m", "tts_server", "--port", str(free_port()),
         "--max-text-length", "5000", "--max-message-size", "21024"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert "--max-message-size 21024" in error and "--max-text-length 5000" in error, error
    assert str(min_message_size(5000)) in error and "listening" not in done.stderr
    # The defaults pass the check (their start-up is tested above), and so does the minimum.
    assert load_config([], {}).max_message_size >= min_message_size(5000)
    at_minimum = load_config(["--max-message-size", str(min_message_size(300)),
                              "--max-text-length", "300"], {})  # fmt: skip
    assert at_minimum.max_message_size == min_message_size(300)
    with pytest.raises(SystemExit):
        load_config([], {"KNOWLITHIC_MAX_TEXT_LENGTH": "20000"})  # needs more than 128 KiB
