"""`python agent.py dev` and `start` when LiveKit cannot be reached: real processes and sockets.

Each worker points at a real local endpoint that fails one way: a closed port, a server that
accepts TCP and never answers, or an HTTP server that refuses the WebSocket upgrade with 401 or
404.  The worker must say within about 15 s, on stderr while it keeps trying, that it cannot
reach LIVEKIT_URL, and end with exit status 1 and one line naming LIVEKIT_URL and the host, no
traceback, no secret.  LIVEKIT_CONNECT_TIMEOUT keeps these runs short; the slow test leaves it
long so that the framework's own give-up (its 16 retries, about two minutes) is the one seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from tests.fake_livekit import API_SECRET, Run, closed_port, run_worker
from tests.test_worker_drain import HEALTH_PORT, port_is_free
from worker.livekit_link import describe_url

GIVE_UP_S = 20  # LIVEKIT_CONNECT_TIMEOUT for the quick runs: past the notice (10 s into main)
NOTICE_BOUND_S = 45.0  # generous: imports and job processes start on a shared machine


# --- endpoints that fail, each a real socket on 127.0.0.1 ---------------------


@contextlib.asynccontextmanager
async def stalled_server() -> AsyncIterator[str]:
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing, keep the socket open

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()


def refusing_server(status: int) -> Callable[[], contextlib.AbstractAsyncContextManager[str]]:
    @contextlib.asynccontextmanager
    async def serve() -> AsyncIterator[str]:
        async def agent_endpoint(_: web.Request) -> web.Response:
            return web.Response(status=status, text="no")

        app = web.Application()
        if status != 404:  # 404: no such route, as a web server that is not LiveKit answers
            app.router.add_get("/agent", agent_endpoint)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            host, port = runner.addresses[0][:2]
            yield f"ws://{host}:{port}"
        finally:
            await runner.cleanup()

    return serve


ENDPOINTS = {
    "closed_port": (closed_port, "connection refused"),
    "stall": (stalled_server, "no answer yet"),
    "http_401": (refusing_server(401), "check LIVEKIT_API_KEY and LIVEKIT_API_SECRET"),
    "http_404": (refusing_server(404), "HTTP 404"),
}


def check_exit(run: Run, command: str, url: str, cause: str) -> None:
    assert run.returncode == 1, run.stderr
    host = describe_url(url)
    notice, final = run.lines_naming_livekit_url()  # exactly these two
    seconds, _ = next((t, line) for t, line in run.stderr_lines if line == notice)
    assert seconds < NOTICE_BOUND_S
    assert notice.startswith(f"agent.py {command}: cannot reach LIVEKIT_URL ({host}) yet")
    assert "still trying" in notice and cause in notice
    assert run.stderr_lines[-1][1] == final
    assert final.startswith(f"agent.py {command}: cannot reach LIVEKIT_URL ({host}): ")
    assert cause in final
    assert "Traceback" not in run.stderr + run.stdout
    assert API_SECRET not in run.stderr + run.stdout


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_dev_says_it_cannot_reach_livekit_then_exits_1(endpoint: str, tmp_path: Path) -> None:
    serve, cause = ENDPOINTS[endpoint]
    async with serve() as url:
        run = await run_worker("dev", url, tmp_path, give_up_s=GIVE_UP_S)
    check_exit(run, "dev", url, cause)
    assert f"gave up after {GIVE_UP_S} s (LIVEKIT_CONNECT_TIMEOUT)" in run.stderr_lines[-1][1]


@pytest.mark.parametrize("endpoint", ["closed_port", "stall", "http_401"])
async def test_start_says_it_cannot_reach_livekit_then_exits_1(
    endpoint: str, tmp_path: Path
) -> None:
    if not port_is_free(HEALTH_PORT):
        pytest.fail(f"port {HEALTH_PORT} is taken: stop the other worker using it")
    serve, cause = ENDPOINTS[endpoint]
    async with serve() as url:
        run = await run_worker("start", url, tmp_path, give_up_s=GIVE_UP_S)
    check_exit(run, "start", url, cause)


@pytest.mark.timeout(300)
async def test_dev_exits_1_when_the_framework_gives_up_retrying(tmp_path: Path) -> None:
    # No LIVEKIT_CONNECT_TIMEOUT in reach: the framework's 16 retries end first (~130 s).
    async with closed_port() as url:
        run = await run_worker("dev", url, tmp_path, give_up_s=600)
    check_exit(run, "dev", url, "connection refused")
    assert run.stderr_lines[-1][1].endswith("the framework gave up retrying")


def test_the_url_is_shown_without_credentials_path_or_query() -> None:
    assert describe_url("wss://key:s3cret@lk.example.com/x?access_token=t") == (
        "wss://lk.example.com"
    )
    assert describe_url("ws://[::1]:7880") == "ws://[::1]:7880"


async def test_start_exits_1_when_the_worker_fails_otherwise(tmp_path: Path) -> None:
    # Its health port held by another program: the framework logs why and would exit 0.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("0.0.0.0", HEALTH_PORT))
        except OSError:
            pytest.fail(f"port {HEALTH_PORT} is taken: stop the other worker using it")
        holder.listen(1)
        async with closed_port() as url:
            run = await run_worker("start", url, tmp_path, give_up_s=GIVE_UP_S)
    assert run.returncode == 1, run.stderr
    assert run.stderr_lines[-1][1] == (
        "agent.py start: the worker failed (OSError; the log above says why)"
    )
    assert '"message": "worker failed"' in run.stdout  # the framework's own account, kept
