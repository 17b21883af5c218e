"""Several real TTS servers behind one plugin: one dies, refuses, fills up, comes back.

Each server is ``python -m tts_server`` in a process of its own (deterministic synthesis, so
a reply finished by another server can be compared with an undisturbed one), killed with
SIGKILL and started again on its port as a restarted container is.  What the caller must
feel: a reply goes on from the next server with no sentence lost or repeated and no error;
a refused or full server costs no turn its timeout; the preferred server is used again once
it has stayed up for a while, and not while it flickers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit.agents import APIConnectionError

from tests.loopback import free_port
from tests.plugin_helpers import (
    BYTES_PER_SECOND,
    LONG_REPLY,
    SHORT,
    WORKER,
    Spoken,
    eventually,
    loudness,
    speak,
)
from tests.resumed_reply import assert_resumed, collect_errors, speak_through_fault
from tests.server_process import DETERMINISTIC, ServerProcess
from tts_custom.knowlithictts import TTS
from tts_custom.server_pool import BUSY_REST, FORGIVE_AFTER, RETURN_AFTER, _Server
from tts_custom.synthesis import MOVE_AFTER_SILENCE


def _server(*args: str) -> ServerProcess:
    return ServerProcess(*DETERMINISTIC, "--log-level", "INFO", *args)


async def _running() -> AsyncIterator[ServerProcess]:
    server = _server()
    await server.start()
    yield server
    await server.stop()


# the preferred server and the next, each a process of its own
first = pytest.fixture(_running, name="first")
second = pytest.fixture(_running, name="second")


async def converse(tts: TTS) -> None:
    """One short reply, heard at real-time pace (a server counts a reply's place until its
    audio has played, so replies read faster than that would fill it)."""
    spoken = await speak(tts, SHORT, conn_options=WORKER)
    assert spoken.pcm
    await asyncio.sleep(len(spoken.pcm) / BYTES_PER_SECOND)


def speaking_through(tts: TTS) -> str | None:
    conn = tts._pool.current
    return tts._pool.server_of(conn) if conn is not None else None


async def test_a_death_mid_reply_moves_the_reply_to_the_next_server_with_nothing_lost(
    first: ServerProcess, second: ServerProcess
) -> None:
    tts = TTS(base_url=f"{first.url},{second.url}")
    try:
        reference = await speak(tts, LONG_REPLY)
        assert speaking_through(tts) == first.url
        errors = collect_errors(tts)
        spoken, heard_before_kill, _ = await speak_through_fault(
            tts,
            1.5,
            first.kill,  # and it stays dead
        )
        assert not errors
        assert speaking_through(tts) == second.url
        assert_resumed(spoken, reference, heard_before_kill, lossless=True)
        # the next turns go straight to the second server
        assert (await speak(tts, SHORT, conn_options=WORKER)).pcm
        assert not errors
    finally:
        await tts.aclose()


async def test_prewarm_opens_the_preferred_server_and_the_next_so_a_move_needs_no_handshake(
    first: ServerProcess, second: ServerProcess
) -> None:
    third = f"ws://127.0.0.1:{free_port()}"  # never dialled by a prewarm
    tts = TTS(base_url=f"{first.url},{second.url},{third}")
    try:
        tts.prewarm()
        await eventually(
            lambda: all(tts._pool.connection(i).current is not None for i in (0, 1)), timeout=5
        )
        assert tts._pool.connection(2).current is None
        assert tts._pool.connection(2)._backoff.failures == 0  # not even tried
    finally:
        await tts.aclose()


async def test_a_server_that_refuses_connections_costs_no_turn_its_timeout(
    second: ServerProcess,
) -> None:
    nobody = f"ws://127.0.0.1:{free_port()}"
    tts = TTS(base_url=f"{nobody},{second.url}")
    try:
        errors = collect_errors(tts)
        started = time.monotonic()
        spoken = await speak(tts, SHORT, conn_options=WORKER)
        # a refused connection is known at once: no wait for the dead server
        assert time.monotonic() - started < 2.0
        assert spoken.pcm and not errors
        assert speaking_through(tts) == second.url
    finally:
        await tts.aclose()


async def test_the_preferred_server_is_used_again_once_it_stayed_up_and_not_while_it_flickers(
    first: ServerProcess, second: ServerProcess
) -> None:
    tts = TTS(base_url=f"{first.url},{second.url}")
    try:
        await speak(tts, SHORT)
        errors = collect_errors(tts)
        await first.kill()
        await converse(tts)
        assert speaking_through(tts) == second.url
        # it comes back, and dies again two seconds later (a crash loop): no reply is sent
        # to it in between, and none is lost
        await first.start()
        back = time.monotonic()
        while time.monotonic() - back < 2.0:
            await converse(tts)
            assert speaking_through(tts) == second.url
        await first.kill()
        await converse(tts)
        # back for good: replies return to it once its socket has stayed up for the hold-down
        # (RETURN_AFTER to twice that for one failure, twice that again for two in a row)
        await first.start()
        back = time.monotonic()
        while speaking_through(tts) != first.url:
            assert time.monotonic() - back < 4 * 2 * RETURN_AFTER + 5.0
            await converse(tts)
        assert time.monotonic() - back >= RETURN_AFTER  # not before it proved itself
        # and it stays there
        for _ in range(3):
            await converse(tts)
            assert speaking_through(tts) == first.url
        assert not errors
    finally:
        await tts.aclose()


async def test_a_full_server_sends_new_replies_to_the_next_at_once() -> None:
    full, spare = _server("--max-streams", "1"), _server()
    await asyncio.gather(full.start(), spare.start())
    occupant = TTS(base_url=full.url)
    tts = TTS(base_url=f"{full.url},{spare.url}")
    try:
        await speak(tts, SHORT)  # both sockets warm: the comparison below is fair
        assert speaking_through(tts) == full.url
        errors = collect_errors(tts)
        # another agent's long reply takes the full server's only place
        holding = asyncio.create_task(speak(occupant, LONG_REPLY))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        spoken = await speak(tts, SHORT, conn_options=WORKER)
        moved_in = time.monotonic() - started
        assert spoken.pcm and not errors
        assert speaking_through(tts) == spare.url
        # the refusal is one round trip: no retry pause of the framework's (0.5 s)
        assert moved_in < 1.0
        await holding
        # once it has room again (and has rested), new replies go back to it
        await asyncio.sleep(5.0)
        await speak(tts, SHORT, conn_options=WORKER)
        assert speaking_through(tts) == full.url
        assert not errors
    finally:
        await asyncio.gather(occupant.aclose(), tts.aclose())
        await asyncio.gather(full.stop(), spare.stop())


async def test_when_no_server_accepts_the_error_names_each_within_the_timeout() -> None:
    urls = [f"ws://127.0.0.1:{free_port()}" for _ in range(3)]
    tts = TTS(base_url=",".join(urls))
    try:
        started = time.monotonic()
        with pytest.raises(APIConnectionError) as info:
            await speak(tts, SHORT, conn_options=WORKER)
        assert time.monotonic() - started < WORKER.timeout + 1.0
        for url in urls:
            assert url in info.value.message
    finally:
        await tts.aclose()


# --- the pool's rules, on a clock of our own ------------------------------------------------


class _Socket:
    """An open connection as the pool sees it: only its age matters here."""

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.now = opened

    @property
    def age(self) -> float:
        return self.now - self.opened


class _Connection:
    def __init__(self) -> None:
        self.current: _Socket | None = None


def _member() -> tuple[_Server, _Connection]:
    connection = _Connection()
    return _Server("ws://a", connection), connection  # type: ignore[arg-type]


def _fit_at(server: _Server, connection: _Connection, now: float) -> bool:
    if connection.current is not None:
        connection.current.now = now
    return server.fit(now) is not None


def test_a_failed_server_is_fit_again_only_after_its_hold_down_which_doubles_in_a_row() -> None:
    server, connection = _member()
    server.failed(100.0)
    first_hold = server.hold_down
    assert 2 * RETURN_AFTER / 2 <= first_hold <= 2 * RETURN_AFTER
    connection.current = _Socket(opened=101.0)
    assert not _fit_at(server, connection, 101.0 + first_hold - 0.01)
    assert _fit_at(server, connection, 101.0 + first_hold + 0.001)
    # a socket opened before the failure proves nothing
    server.failed(130.0)
    assert not _fit_at(server, connection, 200.0)
    # a second failure soon after the first: a longer hold
    connection.current = _Socket(opened=131.0)
    assert server.hold_down >= 2 * RETURN_AFTER
    # one long past the last recovery is forgiven: back to the first hold
    assert _fit_at(server, connection, 131.0 + server.hold_down + 0.001)
    server.failed(131.0 + server.hold_down + FORGIVE_AFTER + 1)
    assert server.hold_down <= 2 * RETURN_AFTER


def test_a_full_server_rests_longer_while_it_stays_full() -> None:
    server, connection = _member()
    connection.current = _Socket(opened=0.0)
    server.full(10.0)
    rest = server.rest_until - 10.0
    assert BUSY_REST / 2 <= rest <= BUSY_REST
    assert not _fit_at(server, connection, 10.0 + rest - 0.01)
    assert _fit_at(server, connection, 10.0 + rest + 0.001)
    server.full(10.0 + rest)
    assert server.rest_until - (10.0 + rest) >= BUSY_REST


async def test_a_server_that_freezes_mid_reply_loses_the_reply_to_the_next_in_a_second_or_two(
    first: ServerProcess, second: ServerProcess
) -> None:
    tts = TTS(base_url=f"{first.url},{second.url}")
    try:
        reference = await speak(tts, LONG_REPLY)
        errors = collect_errors(tts)
        spoken = Spoken()
        frozen_at = 0.0
        arrivals: list[float] = []
        try:
            async with tts.stream(conn_options=WORKER) as stream:
                stream.push_text(LONG_REPLY)
                stream.end_input()
                async for event in stream:
                    spoken.add(event)
                    arrivals.append(time.monotonic())
                    if not frozen_at and len(spoken.pcm) >= 0.1 * BYTES_PER_SECOND:
                        first.freeze()  # SIGSTOP: its sockets stay open, nothing answers
                        frozen_at = time.monotonic()
        finally:
            first.thaw()
        assert not errors
        assert speaking_through(tts) == second.url
        assert abs(len(spoken.pcm) - len(reference.pcm)) <= 0.05 * BYTES_PER_SECOND
        assert np.corrcoef(loudness(spoken.pcm), loudness(reference.pcm))[0, 1] > 0.95
        # the longest wait for audio: the silence allowed before moving, and the move
        longest = max(b - a for a, b in itertools.pairwise(arrivals))
        assert longest < MOVE_AFTER_SILENCE + 1.5
        assert longest < WORKER.timeout  # never the reply's whole patience
    finally:
        await tts.aclose()
