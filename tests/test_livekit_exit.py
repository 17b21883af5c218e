"""`python agent.py dev` and `start` when LiveKit cannot be reached: real processes and sockets.

Each worker points at a real local endpoint that fails one way: a closed port, a server that
accepts TCP and never answers, or an HTTP server that refuses the WebSocket upgrade with 401 or
404.  The worker must say within about 15 s, on stderr while it keeps trying, that it cannot
reach LIVEKIT_URL, and end with exit status 1 and one line naming LIVEKIT_URL and the host, no
traceback, no secret.  LIVEKIT_CONNECT_TIMEOUT keeps these runs short; the slow test leaves it
long so that the framework's own give-up (its 16 retries, about two minutes) is the one seen,
and runs beside the others, which run one after another (about 2.7 minutes in all).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeAlias

import pytest
import pytest_asyncio
from aiohttp import web

from tests.fake_livekit import API_SECRET, HEALTH_PORT, Run, closed_port, port_is_free, run_worker
from worker.livekit_link import describe_url

GIVE_UP_S = 20  # LIVEKIT_CONNECT_TIMEOUT for the quick runs: past the notice (10 s into main)
NOTICE_BOUND_S = 45.0  # generous: imports and job processes start on a shared machine

# every test here awaits runs that all began together; the slowest takes ~135 s
pytestmark = pytest.mark.timeout(300)
IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


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


# --- the runs: started once for the module, each test awaits its own --------------------------

DevResult: TypeAlias = tuple[Run, str]  # the run and the LIVEKIT_URL it was given


async def _dev(endpoint: str, home: Path, give_up_s: float = GIVE_UP_S) -> DevResult:
    serve, _ = ENDPOINTS[endpoint]
    async with serve() as url:
        return await run_worker("dev", url, home, give_up_s=give_up_s), url


async def _start(endpoint: str, home: Path) -> DevResult:
    if not port_is_free(HEALTH_PORT):
        pytest.fail(f"port {HEALTH_PORT} is taken: stop the other worker using it")
    serve, _ = ENDPOINTS[endpoint]
    async with serve() as url:
        return await run_worker("start", url, home, give_up_s=GIVE_UP_S), url


async def _start_with_the_health_port_held(home: Path) -> DevResult:
    # Its health port held by another program: the framework logs why and would exit 0.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("0.0.0.0", HEALTH_PORT))
        except OSError:
            pytest.fail(f"port {HEALTH_PORT} is taken: stop the other worker using it")
        holder.listen(1)
        async with closed_port() as url:
            return await run_worker("start", url, home, give_up_s=GIVE_UP_S), url


async def _after(
    previous: asyncio.Task[DevResult] | None, run: Callable[[], Awaitable[DevResult]]
) -> DevResult:
    if previous is not None:
        with contextlib.suppress(BaseException):  # its own test reports how it ended
            await previous
    return await run()


def _run_of(item: pytest.Item) -> str | None:
    """The run a test of this module checks."""
    callspec = getattr(item, "callspec", None)
    endpoint = callspec.params.get("endpoint") if callspec is not None else None
    return {
        "test_dev_says_it_cannot_reach_livekit_then_exits_1": f"dev {endpoint}",
        "test_start_says_it_cannot_reach_livekit_then_exits_1": f"start {endpoint}",
        "test_dev_exits_1_when_the_framework_gives_up_retrying": "dev framework",
        "test_start_exits_1_when_the_worker_fails_otherwise": "start port held",
    }.get(getattr(item, "originalname", ""))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, asyncio.Task[DevResult]]]:
    """The runs of the selected tests, started once for the module; each test awaits its own."""
    wanted = {
        _run_of(i) for i in request.session.items if getattr(i, "module", None) is request.module
    }

    def home() -> Path:
        return tmp_path_factory.mktemp("worker")

    tasks: dict[str, asyncio.Task[DevResult]] = {}
    if "dev framework" in wanted:
        # No LIVEKIT_CONNECT_TIMEOUT in reach: the framework's 16 retries end first (~130 s).
        tasks["dev framework"] = asyncio.create_task(_dev("closed_port", home(), give_up_s=600))
    # The others one at a time beside it: workers starting together on a loaded machine may not
    # have tried LiveKit once by the notice, and the `start` ones share the health port.
    in_turn: list[tuple[str, Callable[[], Awaitable[DevResult]]]] = [
        *((f"dev {e}", functools.partial(_dev, e, home())) for e in ENDPOINTS),
        *((f"start {e}", functools.partial(_start, e, home())) for e in START_ENDPOINTS),
        ("start port held", functools.partial(_start_with_the_health_port_held, home())),
    ]
    previous: asyncio.Task[DevResult] | None = None
    for name, run in in_turn:
        if name in wanted:
            previous = tasks[name] = asyncio.create_task(_after(previous, run))
    yield tasks
    for task in tasks.values():
        task.cancel()  # the session ended early (-x, Ctrl-C): take the processes down
    await asyncio.gather(*tasks.values(), return_exceptions=True)


START_ENDPOINTS = ["closed_port", "stall", "http_401"]


@IN_MODULE_LOOP
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_dev_says_it_cannot_reach_livekit_then_exits_1(
    endpoint: str, runs: dict[str, asyncio.Task[DevResult]]
) -> None:
    run, url = await runs[f"dev {endpoint}"]
    check_exit(run, "dev", url, ENDPOINTS[endpoint][1])
    assert f"gave up after {GIVE_UP_S} s (LIVEKIT_CONNECT_TIMEOUT)" in run.stderr_lines[-1][1]


@IN_MODULE_LOOP
@pytest.mark.parametrize("endpoint", START_ENDPOINTS)
async def test_start_says_it_cannot_reach_livekit_then_exits_1(
    endpoint: str, runs: dict[str, asyncio.Task[DevResult]]
) -> None:
    run, url = await runs[f"start {endpoint}"]
    check_exit(run, "start", url, ENDPOINTS[endpoint][1])


@IN_MODULE_LOOP
async def test_dev_exits_1_when_the_framework_gives_up_retrying(
    runs: dict[str, asyncio.Task[DevResult]],
) -> None:
    run, url = await runs["dev framework"]
    check_exit(run, "dev", url, "connection refused")
    assert run.stderr_lines[-1][1].endswith("the framework gave up retrying")


def test_the_url_is_shown_without_credentials_path_or_query() -> None:
    assert describe_url("wss://key:s3cret@lk.example.com/x?access_token=t") == (
        "wss://lk.example.com"
    )
    assert describe_url("ws://[::1]:7880") == "ws://[::1]:7880"


@IN_MODULE_LOOP
async def test_start_exits_1_when_the_worker_fails_otherwise(
    runs: dict[str, asyncio.Task[DevResult]],
) -> None:
    run, _ = await runs["start port held"]
    assert run.returncode == 1, run.stderr
    assert run.stderr_lines[-1][1] == (
        "agent.py start: the worker failed (OSError; the log above says why)"
    )
    assert '"message": "worker failed"' in run.stdout  # the framework's own account, kept
