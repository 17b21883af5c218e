"""The real TTS server as a process of its own, to kill and start again as production does.

A container restarted by Docker (``restart: unless-stopped``) or a pod restarted by Kubernetes
dies at once (SIGKILL: no close frame, no error message) and listens again on the same port
once a new process has loaded its voice, 1-2 s later.  A peer that comes back instantly in
the same process hides exactly the failures callers meet, so these tests use this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from tests.loopback import free_port

REPO = Path(__file__).resolve().parent.parent
# Deterministic synthesis: a sentence asked for twice is the same audio, so a resumed reply
# can be compared with an undisturbed one.
DETERMINISTIC = ("--noise-scale", "0", "--noise-w", "0")


class ServerProcess:
    """``python -m tts_server`` on a fixed port; its log (stdout and stderr) is kept."""

    def __init__(
        self,
        *args: str,
        port: int | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
        module: str = "tts_server",
    ) -> None:
        self.args: Sequence[str] = args
        self.module = module  # any server taking --host, --port and answering GET /health
        self.port = port or free_port()
        self.host = host
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._process: asyncio.subprocess.Process | None = None
        self._log = bytearray()
        self._reader: asyncio.Task[None] | None = None
        self.ready_at = 0.0  # time.monotonic() when it last answered /health
        self.killed_at = 0.0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        return self._log.decode(errors="replace")

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, timeout: float = 60.0) -> float:
        """Start it and wait until it serves; returns the seconds that took."""
        started = time.monotonic()
        self._process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", self.module, "--host", self.host),
            *("--port", str(self.port), *self.args),
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(self._process))
        await self._wait_ready(timeout)
        self.ready_at = time.monotonic()
        return self.ready_at - started

    async def kill(self) -> None:
        """SIGKILL: the process and its sockets vanish with no close frame."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.kill()
        self.killed_at = time.monotonic()
        await process.wait()
        await self._stop_reading()

    async def restart(self, down: float = 0.0) -> float:
        """Kill it, wait ``down`` seconds, start it again on the same port.

        Returns how long nothing listened: ``down`` plus the new process's start-up.
        """
        await self.kill()
        await asyncio.sleep(down)
        await self.start()
        return self.ready_at - self.killed_at

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM: a graceful shutdown (``--shutdown-grace``); returns the exit status."""
        process = self._process
        assert process is not None
        process.terminate()
        async with asyncio.timeout(timeout):
            status = await process.wait()
        await self._stop_reading()
        return status

    def freeze(self) -> None:
        """SIGSTOP: sockets stay open and the kernel still accepts, but nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    async def stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
            process.terminate()
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        await self._stop_reading()

    async def _wait_ready(self, timeout: float) -> None:
        process = self._process
        assert process is not None
        health = f"{self.http_url}/health"
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"{self.module} exited early:\n{self.log[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(health) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.02)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):  # never let a full pipe block it
            self._log += chunk

    async def _stop_reading(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
