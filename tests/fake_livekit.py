"""A stand-in for a LiveKit server's agent endpoint, on 127.0.0.1 at an ephemeral port.

It speaks the real worker protocol (``livekit.protocol.agent`` messages over a WebSocket at
``/agent``) far enough for a real worker (``python agent.py start``) to register and report
its status: it checks the worker's signed token as LiveKit does, answers the registration, and
records every status update.  It never offers a job: no media server runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import agent, models

API_KEY = "test-key"  # test-only values, nothing secret; 32+ characters as HS256 wants
API_SECRET = "test-secret-test-secret-test-secret"
WORKER_ID = "AW_fake"
AGENT = Path(__file__).resolve().parent.parent / "agent.py"
HEALTH_PORT = 8081  # production mode's health port: fixed, as the image and the probes expect
EXIT_BOUND_S = 90.0  # how long past its give-up a worker may take to exit


class FakeLiveKit:
    def __init__(self) -> None:
        self.registrations: list[agent.RegisterWorkerRequest] = []
        self.statuses: list[agent.UpdateWorkerStatus] = []
        self.registered = asyncio.Event()
        self.disconnected = asyncio.Event()
        self._status_seen = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/agent", self._agent)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"ws://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeLiveKit:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_status(self, status: agent.WorkerStatus | None, *, after: int = 0) -> None:
        """Until a status update numbered ``after`` or later reports ``status`` (None: any)."""
        async with self._status_seen:
            await self._status_seen.wait_for(
                lambda: any(status in (None, s.status) for s in self.statuses[after:])
            )

    async def _agent(self, request: web.Request) -> web.WebSocketResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)
        except Exception as e:  # any bad token: LiveKit answers 401
            raise web.HTTPUnauthorized(text=f"invalid token: {type(e).__name__}") from None
        if claims.video is None or not claims.video.agent:
            raise web.HTTPForbidden(text="the token does not grant agent")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                await self._handle(ws, agent.WorkerMessage.FromString(message.data))
        self.disconnected.set()
        return ws

    async def _handle(self, ws: web.WebSocketResponse, message: agent.WorkerMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "register":
            self.registrations.append(message.register)
            reply = agent.ServerMessage(
                register=agent.RegisterWorkerResponse(
                    worker_id=WORKER_ID, server_info=models.ServerInfo(region="local")
                )
            )
            await ws.send_bytes(reply.SerializeToString())
            self.registered.set()
        elif kind == "update_worker":
            async with self._status_seen:
                self.statuses.append(message.update_worker)
                self._status_seen.notify_all()


def worker_env(livekit_url: str, home: Path) -> dict[str, str]:
    """The environment for ``python agent.py start`` against this endpoint, keys unused."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("AVERY_WORKER_HOME", str(home)),
        "NO_COLOR": "1",
        "LIVEKIT_URL": livekit_url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "DEEPGRAM_API_KEY": "dg-unused",  # checked at start-up, never called: no job runs
        "GROQ_API_KEY": "gsk-unused",
        "KNOWLITHIC_TTS_SERVER": "ws://127.0.0.1:9",
    }


# --- a worker that cannot reach LiveKit, as a real process ---------------------------


@dataclass
class Run:
    returncode: int
    stderr_lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds, line)
    stdout: str = ""

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.stderr_lines)

    def lines_naming_livekit_url(self) -> list[str]:
        return [line for _, line in self.stderr_lines if "LIVEKIT_URL" in line]


async def run_worker(
    command: str,
    url: str,
    home: Path,
    *,
    give_up_s: float,
    extra_env: Mapping[str, str] | None = None,
) -> Run:
    env = worker_env(url, home) | {"LIVEKIT_CONNECT_TIMEOUT": f"{give_up_s:g}", **(extra_env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(AGENT),
        command,
        cwd=home,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    started = time.monotonic()
    run = Run(returncode=-1)
    assert process.stdout is not None and process.stderr is not None

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            run.stderr_lines.append((time.monotonic() - started, line.decode().rstrip("\n")))

    async def read_stdout(stream: asyncio.StreamReader) -> None:
        run.stdout = (await stream.read()).decode(errors="replace")

    readers = asyncio.gather(read_stderr(process.stderr), read_stdout(process.stdout))
    try:
        run.returncode = await asyncio.wait_for(process.wait(), give_up_s + EXIT_BOUND_S)
    except TimeoutError:
        pytest.fail(f"{command} did not exit:\n{run.stderr}")
    finally:
        if process.returncode is None:  # take the job processes down too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        await readers
    return run


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the worker's server does
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def closed_port() -> AsyncIterator[str]:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}"
