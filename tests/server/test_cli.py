"""``python -m tts_server`` as a real process: help, serving on localhost, SIGTERM, logs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tts_custom import protocol

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serves_ws_localhost_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "KNOWLITHIC_PORT": str(port), "KNOWLITHIC_LOG_LEVEL": "DEBUG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tts_server",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    # Read the log as it comes, so a full pipe never blocks the server.
    reading = asyncio.create_task(process.stdout.read())
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                assert process.returncode is None, "server exited early"
                try:
                    async with http.get(f"http://localhost:{port}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "server did not come up"
                await asyncio.sleep(0.2)
            # the plugin's default URL shape, with its default voice name
            ws = await http.ws_connect(f"ws://localhost:{port}", protocols=(protocol.SUBPROTOCOL,))
            client = Client(ws, tagged=True)
            assert isinstance(await client.receive(), protocol.Capabilities)
            assert (await client.run(SECRET_TEXT, voice="elise")).completed
            await ws.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = (await reading).decode()
    assert returncode == 0, output
    assert "listening on" in output and "stopped" in output
    # Not even at DEBUG does the spoken text reach the log.
    assert "Zanzibar" not in output and "pelican" not in output
