"""The persistent socket recovers: server restarts, drops, idle refreshes."""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit.agents import APIConnectionError, APIConnectOptions

from tests.conftest import MakeTTS
from tests.fake_knowlithic import FakeKnowlithicServer
from tests.plugin_helpers import eventually, expected_digest, speak
from tts_custom.backoff import Backoff, Health

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


async def test_background_reconnect_stops_while_the_server_is_down(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    tts._shared._backoff = Backoff(base=0.01, cap=0.02)
    tts._shared._health = Health(cooldown=0.5)
    await speak(tts, TEXT)
    await server.stop()
    await asyncio.sleep(0.3)  # a few quick attempts fail, then it stops trying
    assert tts._shared.current is None and not tts.healthy
    assert not [t for t in tts._shared._tasks if not t.done()]
    await server.start()
    # within the cool-down a turn fails at once instead of hammering the server
    with pytest.raises(APIConnectionError, match="unhealthy"):
        await speak(tts, TEXT, conn_options=RETRY)
    await asyncio.sleep(0.5)
    assert (await speak(tts, TEXT, conn_options=RETRY)).digest == expected_digest([TEXT])
    assert tts.healthy


async def test_a_server_that_accepts_and_closes_at_once_is_not_hammered(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # a refused key sent as a close frame, or a crash loop (pipecat #3711)
    server.behavior.close_on_connect = True
    tts = make_tts()
    tts._shared._backoff = Backoff(base=0.01, cap=0.02)
    deadline = asyncio.get_running_loop().time() + 1.5
    errors: list[APIConnectionError] = []
    while asyncio.get_running_loop().time() < deadline:
        with pytest.raises(APIConnectionError) as info:
            await speak(tts, TEXT, conn_options=RETRY)
        errors.append(info.value)
    assert not tts.healthy
    assert "unhealthy" in str(errors[-1])
    assert server.received.connections == 3  # then it stopped: no reconnect storm


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


def test_health_trips_after_failures_in_a_row_and_cools_down_longer_each_time() -> None:
    health = Health(threshold=3, cooldown=10, max_cooldown=25)
    tripped = [health.failed(0), health.failed(1), health.failed(2)]
    assert tripped == [False, False, True]
    assert not health.healthy
    assert health.wait_left(2) == 10 and health.wait_left(13) == 0
    assert health.failed(13) and health.wait_left(13) == 20  # the retry failed: twice as long
    assert health.failed(40) and health.wait_left(40) == 25  # capped
    health.succeeded()
    assert health.wait_left(40) == 0
    assert health.healthy  # mypy narrowed this to False above; the call changed it
