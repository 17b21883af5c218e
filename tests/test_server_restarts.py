"""The real TTS server killed and started again mid-call, as Docker or Kubernetes restart it.

Each test runs ``python -m tts_server`` as a process of its own (deterministic synthesis, so
a resumed reply can be compared with an undisturbed one), kills it with SIGKILL or freezes
it with SIGSTOP, and starts a new process on the same port, which listens again 1-2 s later
once it has loaded its voice.  What the caller must feel: a pause, never a lost or repeated
sentence, never a turn refused by a server that is back, and never more silence than the
reply's timeout before the session hears of a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from livekit.agents import APIConnectionError, APIConnectOptions, APIError, APITimeoutError

from knowlithic_protocol import OutputFormat
from tests.plugin_helpers import (
    BYTES_PER_SECOND,
    LONG_REPLY,
    SHORT,
    WORKER,
    Spoken,
    eventually,
    speak,
)
from tests.resumed_reply import assert_resumed, collect_errors, speak_through_fault
from tests.server_process import DETERMINISTIC, ServerProcess
from tts_custom.backoff import STABLE_AFTER
from tts_custom.knowlithictts import TTS
from tts_custom.shared_connection import WAITING_CAP


@pytest.fixture
async def tts_server() -> AsyncIterator[ServerProcess]:
    # Admission by headroom off: these tests are about the plugin across restarts, and a cold
    # server on a loaded machine may rightly answer busy to replies resumed all at once
    # (admission is tested in tests/server/test_headroom.py).
    server = ServerProcess(*DETERMINISTIC, "--log-level", "INFO", "--first-audio-target", "0")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def tts(tts_server: ServerProcess) -> AsyncIterator[TTS]:
    plugin = TTS(base_url=tts_server.url)
    yield plugin
    await plugin.aclose()


@pytest.mark.parametrize(
    ("kill_after", "output_format"), [(0.5, "wav"), (3.0, "wav"), (0.5, "opus"), (3.0, "opus")]
)
async def test_a_restart_mid_reply_costs_a_pause_not_the_reply(
    kill_after: float, output_format: OutputFormat, tts_server: ServerProcess
) -> None:
    tts = TTS(base_url=tts_server.url, output_format=output_format)
    try:
        await _restart_mid_reply(kill_after, tts_server, tts)
    finally:
        await tts.aclose()


async def _restart_mid_reply(kill_after: float, tts_server: ServerProcess, tts: TTS) -> None:
    reference = await speak(tts, LONG_REPLY)
    errors = collect_errors(tts)
    spoken, heard_before_kill, down = await speak_through_fault(tts, kill_after, tts_server.restart)
    assert 0.5 < down < 4.0  # a real restart: a new process loaded its voice
    assert not errors
    assert_resumed(spoken, reference, heard_before_kill, lossless=tts._opts.output_format != "opus")


async def _first_audio_at(plugin: TTS, text: str, options: APIConnectOptions) -> float:
    """When the first audio of ``text`` arrived; the reply is read to its end."""
    first = 0.0
    async with plugin.stream(conn_options=options) as stream:
        stream.push_text(text)
        stream.end_input()
        async for _ in stream:
            first = first or time.monotonic()
    return first


async def test_turns_during_and_after_a_restart_are_served_as_soon_as_it_listens(
    tts_server: ServerProcess, tts: TTS
) -> None:
    await speak(tts, SHORT)
    errors = collect_errors(tts)
    await tts_server.kill()
    starting = asyncio.create_task(tts_server.start())
    # three turns arrive while nothing listens: they wait for the server, not fail at once
    firsts = await asyncio.gather(*(_first_audio_at(tts, SHORT, WORKER) for _ in range(3)))
    await starting
    for first in firsts:
        # used as soon as it accepts: at most one pause between attempts after it listens
        assert first - tts_server.ready_at < WAITING_CAP + 0.5
    # and the turns after it are served on the same new socket, with no cool-down
    for _ in range(3):
        await speak(tts, SHORT, conn_options=WORKER)
    assert tts.healthy
    assert not errors


async def test_a_frozen_server_reaches_the_session_within_the_timeout_whatever_the_retries(
    tts_server: ServerProcess, tts: TTS
) -> None:
    await speak(tts, SHORT)  # the socket is open
    # the framework's own retry settings: four attempts, two seconds apart
    options = APIConnectOptions(max_retry=3, retry_interval=2.0, timeout=2.0)
    errors = collect_errors(tts)
    fresh = TTS(base_url=tts_server.url)  # its handshake will hang
    tts_server.freeze()  # the kernel still accepts; the process answers nothing
    try:
        for plugin in (tts, fresh):
            started = time.monotonic()
            with pytest.raises(APITimeoutError) as info:
                await speak(plugin, SHORT, conn_options=options)
            assert time.monotonic() - started < options.timeout + 0.5
            assert not info.value.retryable
    finally:
        tts_server.thaw()
        await fresh.aclose()
    assert [e.recoverable for e in errors] == [False]  # one error, no retry on top
    assert (await speak(tts, SHORT)).pcm  # thawed: the next turn is spoken


async def test_the_workers_timeout_bounds_the_silence_of_a_frozen_server(
    tts_server: ServerProcess, tts: TTS
) -> None:
    await speak(tts, SHORT)
    tts_server.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            await speak(tts, SHORT, conn_options=WORKER)
        assert WORKER.timeout - 0.1 <= time.monotonic() - started < WORKER.timeout + 0.5
    finally:
        tts_server.thaw()


@pytest.mark.parametrize("comes_back", [False, True])
async def test_a_graceful_shutdown_mid_reply_says_so_or_resumes(
    comes_back: bool, tts_server: ServerProcess
) -> None:
    # grace 0: requests in flight end at once with shutting_down, then the socket closes 1001
    server = ServerProcess(
        *DETERMINISTIC, "--shutdown-grace", "0", "--first-audio-target", "0", port=tts_server.port
    )
    await tts_server.stop()
    await server.start()
    plugin = TTS(base_url=server.url)
    options = APIConnectOptions(max_retry=3, retry_interval=0.5, timeout=3.0)
    try:
        reference = await speak(plugin, LONG_REPLY)
        spoken = Spoken()
        stopping: asyncio.Task[None] | None = None

        async def shut_down() -> None:
            assert await server.terminate() == 0
            if comes_back:
                await server.start()

        expected = contextlib.nullcontext() if comes_back else pytest.raises(APIConnectionError)
        try:
            with expected as info:
                async with plugin.stream(conn_options=options) as stream:
                    stream.push_text(LONG_REPLY)
                    stream.end_input()
                    async for event in stream:
                        spoken.add(event)
                        if stopping is None and len(spoken.pcm) >= 2 * BYTES_PER_SECOND:
                            stopping = asyncio.create_task(shut_down())
        finally:
            if stopping is not None:
                await stopping
        assert stopping is not None
        if comes_back:
            assert abs(len(spoken.pcm) - len(reference.pcm)) <= 0.05 * BYTES_PER_SECOND
        else:
            assert info is not None
            message = str(info.value)
            assert "shut" in message and "did not come back" in message
    finally:
        await plugin.aclose()
        await server.stop()


async def _freeze_mid_reply(
    plugin: TTS, server: ServerProcess, options: APIConnectOptions, then: float | None
) -> tuple[float, APIError | None]:
    """Freeze the server at LONG_REPLY's first audio, while later sentences are still owed,
    SIGKILL it ``then`` seconds later (never back); the seconds from the freeze to the
    reply's end, and its error.  (Owed requests date the fault from the freeze: a budget
    computed from that date, not from now, once gave each reconnect the whole timeout.)"""
    frozen_at = 0.0
    killing: asyncio.Task[None] | None = None

    async def kill_later() -> None:
        await asyncio.sleep(then or 0.0)
        await server.kill()

    try:
        async with plugin.stream(conn_options=options) as stream:
            stream.push_text(LONG_REPLY)
            stream.end_input()
            heard = 0.0
            async for event in stream:
                heard += event.frame.duration
                if not frozen_at and heard > 0:
                    server.freeze()
                    frozen_at = time.monotonic()
                    if then is not None:
                        killing = asyncio.create_task(kill_later())
    except APIError as e:
        return time.monotonic() - frozen_at, e
    finally:
        if killing is not None:
            await killing
    return time.monotonic() - frozen_at, None


async def test_a_stall_then_a_dead_socket_costs_one_timeout_not_two(
    tts_server: ServerProcess,
) -> None:
    # a watchdog kills the hung server 2 s into the stall: the 2 s count, the wait for a
    # new server gets only what is left (before: the clock restarted at the kill)
    plugin = TTS(base_url=tts_server.url)
    options = APIConnectOptions(max_retry=3, retry_interval=0.5, timeout=3.0)
    try:
        waited, error = await _freeze_mid_reply(plugin, tts_server, options, then=2.0)
    finally:
        await plugin.aclose()
    assert error is not None and not error.retryable
    assert waited < options.timeout + 0.5


async def test_a_stall_the_heartbeat_ends_costs_one_timeout(tts_server: ServerProcess) -> None:
    # the plugin's own pings find the frozen server dead after 1.5 s: the same clock
    plugin = TTS(base_url=tts_server.url, heartbeat=1.0)
    options = APIConnectOptions(max_retry=3, retry_interval=0.5, timeout=3.0)
    try:
        waited, error = await _freeze_mid_reply(plugin, tts_server, options, then=None)
    finally:
        await plugin.aclose()
        tts_server.thaw()
    assert error is not None and not error.retryable
    assert waited < options.timeout + 0.5


async def test_a_socket_up_for_a_while_proves_the_server_even_unused(
    tts_server: ServerProcess,
) -> None:
    # two restarts far enough apart, no turn between them: the first outage must not still
    # be running at the second, or a turn during it would fail as "unreachable"
    plugin = TTS(base_url=tts_server.url, unhealthy_after=4.0)
    try:
        await speak(plugin, SHORT)
        await tts_server.restart()
        await eventually(lambda: plugin._pool.current is not None, timeout=3.0)
        await asyncio.sleep(STABLE_AFTER + 0.5)  # reopened in the background, never used
        assert plugin.healthy
        await tts_server.kill()
        starting = asyncio.create_task(tts_server.start())
        spoken = await speak(plugin, SHORT, conn_options=WORKER)  # during the second restart
        await starting
        assert spoken.pcm
    finally:
        await plugin.aclose()


async def test_a_restart_under_eight_replies_loses_none(tts_server: ServerProcess) -> None:
    # resumed replies ask again for their sentences all at once: over the server's limit of
    # requests in flight on one connection (8) unless the plugin keeps to it
    plugin = TTS(base_url=tts_server.url)
    restart: asyncio.Task[float] | None = None

    async def reply(n: int) -> Spoken:
        nonlocal restart
        spoken = Spoken()
        async with plugin.stream(conn_options=WORKER) as stream:
            stream.push_text(LONG_REPLY)
            stream.end_input()
            async for event in stream:
                spoken.add(event)
                if n == 0 and restart is None and len(spoken.pcm) >= 0.5 * BYTES_PER_SECOND:
                    restart = asyncio.create_task(tts_server.restart())
        return spoken

    try:
        replies = await asyncio.gather(*(reply(n) for n in range(8)), return_exceptions=True)
    finally:
        if restart is not None:
            await restart
        await plugin.aclose()
    assert restart is not None
    errors = [r for r in replies if isinstance(r, BaseException)]
    assert not errors, errors
