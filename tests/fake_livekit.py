"""A stand-in for a LiveKit server's agent endpoint, on 127.0.0.1 at an ephemeral port.

It speaks the real worker protocol (``livekit.protocol.agent`` messages over a WebSocket at
``/agent``) far enough for a real worker (``python agent.py start``) to register and report
its status: it checks the worker's signed token as LiveKit does, answers the registration, and
records every status update.  It never offers a job: no media server runs here.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
from aiohttp import web
from livekit import api
from livekit.protocol import agent, models

API_KEY = "test-key"  # test-only values, nothing secret; 32+ characters as HS256 wants
API_SECRET = "test-secret-test-secret-test-secret"
WORKER_ID = "AW_fake"


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
