"""scripts/run-local.sh when the TTS server's port is already taken: real processes, real sockets.

What holds the port is a plain TCP listener, an HTTP server that is something else, an HTTP
server answering /health as another version would, or this checkout's own server (a real
``python -m tts_server`` process).  Only the last is used; the others are named and the script
exits 1 before it starts anything.  The worker's part is ``agent.py dev --help``: it needs no
configuration and ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.server_process import ServerProcess
from tts_server import __version__

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "run-local.sh"


async def run_local(port: int, home: Path) -> tuple[int, str, str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "NO_COLOR": "1",
        "KNOWLITHIC_TTS_SERVER": f"ws://127.0.0.1:{port}",
    }
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(SCRIPT),
        "dev",
        "--help",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def tcp_listener() -> AsyncIterator[int]:
    with socket.socket() as sock:  # accepts (the kernel's backlog), never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def http_server(
    handler: Callable[[web.Request], web.Response],
) -> Callable[[], contextlib.AbstractAsyncContextManager[int]]:
    @contextlib.asynccontextmanager
    async def serve() -> AsyncIterator[int]:
        async def answer(request: web.Request) -> web.Response:
            return handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            yield int(runner.addresses[0][1])
        finally:
            await runner.cleanup()

    return serve


OTHERS = {
    "tcp_listener": (tcp_listener, "not a Knowlithic TTS server"),
    "another_http_server": (
        http_server(lambda _: web.Response(text="<html>a dev web server</html>")),
        "not a Knowlithic TTS server",
    ),
    "an_older_tts_server": (
        http_server(lambda _: web.json_response({"status": "ok", "version": "0.0.1"})),
        f"another version (0.0.1; this checkout is {__version__})",
    ),
}


@pytest.mark.parametrize("holder", list(OTHERS))
async def test_a_port_taken_by_something_else_is_named_and_nothing_starts(
    holder: str, tmp_path: Path
) -> None:
    serve, said = OTHERS[holder]
    async with serve() as port:
        code, out, err = await run_local(port, tmp_path)
    assert code == 1, out + err
    (line,) = err.splitlines()
    assert line.startswith(f"port {port} is taken by ") and said in line
    assert "KNOWLITHIC_TTS_SERVER" in line
    assert "starting the local TTS server" not in out
    assert "Usage" not in out  # the worker was not started either


async def test_our_own_live_server_is_reused_and_left_running(tmp_path: Path) -> None:
    server = ServerProcess()
    await server.start()
    try:
        code, out, err = await run_local(server.port, tmp_path)
        assert code == 0, out + err
        assert (
            f"using the TTS server already running on :{server.port} (version {__version__})"
            in (out)
        )
        assert "starting the local TTS server" not in out
        assert "Usage" in out  # the worker ran
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{server.http_url}/health") as still,
        ):
            assert still.status == 200  # left running: the script did not start it
    finally:
        await server.stop()
