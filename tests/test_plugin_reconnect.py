"""The persistent socket recovers: server restarts, drops, idle refreshes."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit.agents import APIConnectionError, APIConnectOptions

from tests.conftest import MakeTTS
from tests.fake_knowlithic import FakeKnowlithicServer
from tests.plugin_helpers import eventually, expected_digest, speak
from tts_custom.backoff import Backoff, Outage, Patience

TEXT = "Still speaking after the trouble."
RETRY = APIConnectOptions(max_retry=3, retry_interval=0.2, timeout=2.0)


async def test_recovers_after_the_server_restarts(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    await speak(tts, TEXT)
    await server.stop()
    await asyncio.sleep(0.1)
    await server.start()  # same port
    spoken = await speak(tts, TEXT, conn_options=RETRY)
    assert spoken.digest == expected_digest([TEXT])
    assert server.received.connections == 2


async def test_a_dropped_idle_socket_is_reopened_in_the_background(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    await speak(tts, TEXT)
    await server.drop_connections()
    # reopened without any request asking for it, so the next turn finds it warm
    await eventually(lambda: server.received.connections == 2 and server.open_connections == 1)
    requests_before = len(server.received.requests)
    await speak(tts, TEXT)
    assert server.received.connections == 2
    assert len(server.received.requests) == requests_before + 1


async def test_a_server_close_frame_is_treated_like_a_drop(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    await speak(tts, TEXT)
    await server.close_connections(code=1001)
    await eventually(lambda: server.received.connections == 2)
    assert (await speak(tts, TEXT)).digest == expected_digest([TEXT])


async def test_background_reconnect_keeps_trying_at_a_bounded_pace_while_the_server_is_down(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    tts._pool.connection()._backoff = Backoff(base=0.05, cap=0.2)
    await speak(tts, TEXT)
    await server.stop()
    await asyncio.sleep(1.0)
    # paced: 0.025-0.05, 0.05-0.1, then 0.1-0.2 s apart; never a storm, never given up
    assert 5 <= tts._pool.connection()._backoff.failures <= 14
    assert tts._pool.current is None
    await server.start()
    # reopened in the background within one pause, so the next turn finds it warm
    await eventually(lambda: tts._pool.current is not None, timeout=1.0)
    requests_before = len(server.received.requests)
    assert (await speak(tts, TEXT)).digest == expected_digest([TEXT])
    assert server.received.connections == 2
    assert len(server.received.requests) == requests_before + 1


async def test_a_server_down_for_a_while_fails_new_turns_after_one_attempt(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts(unhealthy_after=0.3)
    tts._pool.connection()._backoff = Backoff(base=0.05, cap=0.1)
    await speak(tts, TEXT)
    await server.stop()
    await eventually(lambda: not tts.healthy)
    started = time.perf_counter()
    with pytest.raises(APIConnectionError) as info:
        await speak(tts, TEXT, conn_options=RETRY)
    # one more attempt (at most 0.1 s away), not the reply's whole 2 s of patience
    assert time.perf_counter() - started < 0.5
    assert "unreachable" in str(info.value) and "cannot connect" in str(info.value)
    assert not info.value.retryable
    await server.start()
    # the next attempt finds it: healthy again, no cool-down to sit out
    assert (await speak(tts, TEXT, conn_options=RETRY)).digest == expected_digest([TEXT])
    assert tts.healthy


async def test_a_server_that_accepts_and_closes_at_once_is_not_hammered(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # a refused key sent as a close frame, or a crash loop (pipecat #3711)
    server.behavior.close_on_connect = True
    tts = make_tts()
    started = time.perf_counter()
    with pytest.raises(APIConnectionError) as info:
        await speak(tts, TEXT, conn_options=RETRY)
    # it ended within the reply's patience (2 s), each drop counted as a failure, so the
    # attempts backed off (0.1-0.2 s, doubling, at most 1 s apart while a reply waits)
    assert time.perf_counter() - started < RETRY.timeout + 0.5
    assert not info.value.retryable
    assert 3 <= server.received.connections <= 7
    assert tts._pool.connection()._backoff.failures == server.received.connections


async def test_an_old_socket_is_replaced_before_its_maximum_age(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts(max_connection_age=0.3)
    await speak(tts, TEXT)
    await eventually(lambda: server.received.connections == 2)
    await eventually(lambda: server.open_connections == 1)  # the old one was closed
    started = time.perf_counter()
    await speak(tts, TEXT)
    assert time.perf_counter() - started < 1.0
    assert server.received.connections in (2, 3)


async def test_an_old_socket_finishes_its_requests_before_closing(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.01
    tts = make_tts(max_connection_age=0.2)
    long_text = "This reply keeps playing while the socket under it gets old. " * 3
    spoken = await speak(tts, long_text)
    texts = [r.text for r in server.received.requests]
    assert spoken.digest == expected_digest(texts)


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base=0.2, cap=2.0)
    assert backoff.next_delay() == 0.0
    delays = []
    for _ in range(8):
        backoff.failed()
        delays.append(backoff.next_delay())
    ceilings = [min(2.0, 0.2 * 2**n) for n in range(8)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not a fixed ladder
    backoff.succeeded()
    assert backoff.next_delay() == 0.0


@pytest.mark.parametrize("streams", [6])
async def test_a_reconnect_storm_opens_one_socket(
    streams: int, server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    await speak(tts, TEXT)
    await server.drop_connections()
    results = await asyncio.gather(
        *(speak(tts, f"Stream {n} after the drop.", conn_options=RETRY) for n in range(streams))
    )
    for n, spoken in enumerate(results):
        assert spoken.digest == expected_digest([f"Stream {n} after the drop."])
    assert server.received.connections == 2


async def test_pings_keep_an_idle_socket_open(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # the server (like many proxies) closes sockets that stay silent for 0.3 s
    server.behavior.idle_timeout = 0.3
    pinging = make_tts(heartbeat=0.1)
    await speak(pinging, TEXT)
    await asyncio.sleep(1.0)
    assert server.received.connections == 1 and server.open_connections == 1

    silent = make_tts(heartbeat=None)
    await speak(silent, TEXT)
    await eventually(lambda: server.received.connections >= 3)  # closed, then reopened
    assert (await speak(silent, TEXT, conn_options=RETRY)).digest == expected_digest([TEXT])


def test_the_server_counts_as_down_after_failing_for_a_while_not_after_a_burst() -> None:
    outage = Outage(unhealthy_after=10.0)
    # a burst of refusals in the first second of a restart: still healthy
    assert not any(outage.failed(t / 10) for t in range(10))
    assert outage.healthy(1.0) and outage.down_for(1.0) == 1.0
    assert outage.failed(10.0)  # failing for 10 s: down, said once
    assert not outage.failed(11.0) and not outage.healthy(11.0)
    outage.succeeded()
    assert outage.healthy(11.0) and outage.failures == 0


def test_a_replys_patience_counts_from_the_start_of_the_fault_across_attempts() -> None:
    patience = Patience(seconds=5.0)
    assert patience.left(100.0) == 5.0 and not patience.spent(100.0)
    patience.fault(100.0)  # the socket dropped
    patience.fault(101.0)  # the reconnect failed too: same fault, same start
    assert patience.left(102.0) == 3.0
    assert patience.spent(105.0) and patience.left(106.0) == 0.0
    patience.recovered()  # audio again: the next fault gets the whole time
    assert patience.left(106.0) == 5.0


async def test_an_interruption_while_waiting_for_the_server_ends_the_wait_at_once(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.005
    tts = make_tts()
    stream = tts.stream(conn_options=APIConnectOptions(timeout=5.0))
    stream.push_text("A long enough reply to be cut. " * 4)
    stream.end_input()
    await stream.__anext__()
    await server.stop()  # the reply now waits for the server
    await asyncio.sleep(0.3)
    started = time.perf_counter()
    await stream.aclose()  # the caller talks over the silence
    assert time.perf_counter() - started < 0.5
    assert tts._pool.connection()._waiting == 0
    await server.start()
    server.behavior.chunk_delay = 0.0
    # nothing of the interrupted reply reaches the next turn
    assert (await speak(tts, TEXT, conn_options=RETRY)).digest == expected_digest([TEXT])
