"""The worker as it runs in production: ``python agent.py start``, a real process.

It registers with a stand-in LiveKit endpoint (tests/fake_livekit.py: the real worker protocol
on 127.0.0.1), reports its load, passes the Docker image's own HEALTHCHECK command (production
mode's port 8081, as the Kubernetes probes use it), and on SIGTERM drains with agent.py's
timeout: it tells LiveKit it takes no more calls, closes its connection and exits 0 well within
its drain period, with no traceback.  No job is offered: that needs a media server.  (Whether
it reports itself available first depends on this machine's CPU, which other work may fill.)

The worker runs from this checkout with this interpreter, unless AVERY_WORKER_PYTHON,
AVERY_WORKER_APP and AVERY_WORKER_HOME name another: scripts/check_image_steps.py runs this
test against a fresh environment laid out as the image is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from livekit.protocol import agent as proto

import agent
from tests import dockerfile
from tests.fake_livekit import HEALTH_PORT, FakeLiveKit, port_is_free, worker_env

REPO = Path(__file__).resolve().parent.parent
WORKER_PYTHON = os.environ.get("AVERY_WORKER_PYTHON", sys.executable)
WORKER_APP = Path(os.environ.get("AVERY_WORKER_APP", REPO))
STARTUP_TIMEOUT = 60.0  # imports, the turn detector's process and the idle job processes
EXIT_TIMEOUT = 30.0  # nothing to wait for: no call is in progress

T = TypeVar("T")


@pytest.fixture
async def livekit() -> AsyncIterator[FakeLiveKit]:
    async with FakeLiveKit() as server:
        yield server


class Worker:
    """``python agent.py start`` in its own process group, its output collected."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output = bytearray()
        assert process.stdout is not None
        self._reader = asyncio.create_task(self._read(process.stdout))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    async def within(self, awaitable: Awaitable[T], seconds: float, what: str) -> T:
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except TimeoutError:
            pytest.fail(f"the worker did not {what} within {seconds:.0f} s:\n{self.text}")

    async def close(self) -> None:
        if self.process.returncode is None:  # a failed test: take the job processes down too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        await self._reader


@pytest.mark.timeout(150)
async def test_the_worker_registers_answers_its_health_check_and_drains_on_sigterm(
    livekit: FakeLiveKit, tmp_path: Path
) -> None:
    if not port_is_free(HEALTH_PORT):
        pytest.fail(f"port {HEALTH_PORT} is taken: stop the other worker using it")
    healthcheck = dockerfile.healthcheck(REPO / "Dockerfile")
    assert healthcheck[0] == "python"

    process = await asyncio.create_subprocess_exec(
        WORKER_PYTHON,
        str(WORKER_APP / "agent.py"),
        "start",
        cwd=tmp_path,  # no .env here: only the variables below
        env=worker_env(livekit.url, tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    worker = Worker(process)
    try:
        await worker.within(livekit.registered.wait(), STARTUP_TIMEOUT, "register")
        await worker.within(livekit.wait_for_status(None), 15, "report its load")
        check = await asyncio.create_subprocess_exec(WORKER_PYTHON, *healthcheck[1:])
        assert await worker.within(check.wait(), 15, "answer the HEALTHCHECK") == 0

        seen = len(livekit.statuses)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await worker.within(
            livekit.wait_for_status(proto.WorkerStatus.WS_FULL, after=seen),
            15,
            "tell LiveKit it takes no more calls",
        )
        returncode = await worker.within(process.wait(), EXIT_TIMEOUT, "exit")
        took = time.monotonic() - signalled
    finally:
        await worker.close()

    assert returncode == 0, worker.text
    assert took < agent.DRAIN_TIMEOUT_S
    assert livekit.disconnected.is_set()
    (registration,) = livekit.registrations
    assert registration.type == proto.JobType.JT_ROOM and registration.agent_name == ""
    assert "registered worker" in worker.text
    assert '"message": "draining worker"' in worker.text
    assert f'"timeout": {agent.DRAIN_TIMEOUT_S}' in worker.text
    assert "Traceback" not in worker.text, worker.text
