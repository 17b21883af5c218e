"""Faults injected through real sockets, and what the user of the plugin sees for each.

docs/reliability.md lists every fault with the test here (or elsewhere) that proves it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
)
from livekit.agents import tts as lk_tts

import knowlithic_protocol as protocol
from tests.conftest import MakeTTS
from tests.fake_knowlithic import FakeKnowlithicServer, speech_for
from tests.plugin_helpers import Spoken, eventually, expected_digest, speak
from tests.raw_peers import DeafPeer, HangingUpgrade
from tts_custom.backoff import Backoff
from tts_custom.transport import ConnectionLost
from tts_custom.ws_transport import CLOSE_TIMEOUT, MAX_MESSAGE_SIZE, connect

TEXT = ("The first sentence is spoken.", "Then the second one follows.")
QUICK = APIConnectOptions(max_retry=0, timeout=0.5)
RETRY = APIConnectOptions(max_retry=2, retry_interval=0.05, timeout=1.0)
# 100 replies queue behind two reconnects: on a loaded machine the last waits over a second
CROWDED = APIConnectOptions(max_retry=2, retry_interval=0.05, timeout=3.0)
PATIENT = APIConnectOptions(max_retry=3, retry_interval=0.5, timeout=5.0)  # the worker's


@pytest.fixture
async def hanging() -> AsyncIterator[HangingUpgrade]:
    peer = HangingUpgrade()
    await peer.start()
    yield peer
    await peer.aclose()


@pytest.fixture
async def deaf() -> AsyncIterator[DeafPeer]:
    peer = DeafPeer()
    await peer.start()
    yield peer
    await peer.aclose()


async def test_a_hang_during_the_upgrade_is_a_timeout(
    hanging: HangingUpgrade, make_tts: MakeTTS
) -> None:
    tts = make_tts(base_url=hanging.url)
    started = time.perf_counter()
    with pytest.raises(APITimeoutError):
        await speak(tts, TEXT[0], conn_options=QUICK)
    assert time.perf_counter() - started < 1.5


async def test_a_frozen_peer_times_out_and_does_not_hold_up_closing(
    deaf: DeafPeer, make_tts: MakeTTS
) -> None:
    tts = make_tts(base_url=deaf.url)
    with pytest.raises(APITimeoutError):
        await speak(tts, TEXT[0], conn_options=QUICK)
    started = time.perf_counter()
    await tts.aclose()  # it never answers the close frame
    assert time.perf_counter() - started < CLOSE_TIMEOUT + 1.0


async def test_a_stall_mid_stream_is_a_timeout_and_the_next_turn_works(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.stall_after_chunks = 3
    tts = make_tts()
    started = time.perf_counter()
    with pytest.raises(APITimeoutError):
        await speak(tts, TEXT[0], conn_options=RETRY)
    # audio had played, so it is not retried: the error comes after one timeout, not three
    assert time.perf_counter() - started < 2 * RETRY.timeout
    assert server.received.cancels  # the stuck request was cancelled on the server
    server.behavior.stall_after_chunks = None
    assert (await speak(tts, TEXT[1])).digest == expected_digest([TEXT[1]])
    assert server.received.connections == 1


async def test_a_completion_that_never_comes_is_a_timeout(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.withhold_completion = True
    tts = make_tts()
    with pytest.raises(APITimeoutError):
        await speak(tts, TEXT[0], conn_options=RETRY)
    server.behavior.withhold_completion = False
    assert (await speak(tts, TEXT[1])).digest == expected_digest([TEXT[1]])


async def test_a_huge_message_drops_the_socket_and_is_recovered(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.huge_message = MAX_MESSAGE_SIZE + 1024  # once
    tts = make_tts()
    spoken = await speak(tts, " ".join(TEXT), conn_options=RETRY)
    assert spoken.digest == expected_digest(TEXT)
    assert server.received.connections == 2


async def test_audio_for_an_unknown_request_never_mixes_in(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    stray = protocol.encode_server_message(
        protocol.Audio(request_id="someone-else-0", data=b"\x7f\x7f" * 800, sample_rate=16000)
    )
    assert isinstance(stray, bytes)
    server.behavior.before_audio = [stray]
    tts = make_tts()
    spoken = await speak(tts, " ".join(TEXT))
    assert spoken.digest == expected_digest(TEXT)


async def test_server_death_before_the_first_audio_speaks_the_sentence_once(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.drop_after_chunks = 0
    server.behavior.max_drops = 1
    tts = make_tts()
    spoken = await speak(tts, " ".join(TEXT), conn_options=RETRY)
    assert spoken.digest == expected_digest(TEXT)


async def test_server_death_after_audio_resumes_where_the_user_stopped_hearing(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.002
    server.behavior.drop_after_chunks = 10  # in the middle of the first sentence
    server.behavior.max_drops = 1
    tts = make_tts()
    spoken = await speak(tts, " ".join(TEXT), conn_options=RETRY)
    assert spoken.digest == expected_digest(TEXT)  # nothing lost, nothing twice


async def test_a_server_that_never_comes_back_reaches_the_session_and_then_recovers(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.01  # still streaming when the server goes
    tts = make_tts()
    stream = tts.stream(conn_options=RETRY)
    stream.push_text(" ".join(TEXT))
    stream.end_input()
    await stream.__anext__()
    await server.stop()  # gone for good, mid-reply
    started = time.perf_counter()
    with pytest.raises(APIConnectionError) as info:
        async for _ in stream:
            pass
    waited = time.perf_counter() - started
    await stream.aclose()
    # it waited the reply's patience for the server, then said what happened, finally
    assert RETRY.timeout - 0.1 <= waited < RETRY.timeout + 0.5
    assert not info.value.retryable
    message = str(info.value)
    assert "connection lost" in message and "did not come back" in message
    assert "cannot connect" in message
    await server.start()
    # real-time audio makes the framework end a segment with 10 ms of silence: avoid that
    server.behavior.chunk_delay = 0.0
    # back: used at once, no cool-down
    assert (await speak(tts, TEXT[1], conn_options=RETRY)).digest == expected_digest([TEXT[1]])


def _heard_once(heard: bytes, sentences: tuple[str, ...]) -> bool:
    """Whether ``heard`` is the start of ``sentences`` spoken in order: nothing twice."""
    whole = b"".join(speech_for(s, 16000) for s in sentences)
    return bool(heard) and whole.startswith(heard)


async def _heard_until_error(
    stream: lk_tts.ChunkedStream | lk_tts.SynthesizeStream,
) -> tuple[Spoken, APIError | None]:
    spoken = Spoken()
    try:
        async with stream:
            async for event in stream:
                spoken.add(event)
    except APIError as e:
        return spoken, e
    return spoken, None


async def test_a_stall_mid_sentence_with_synthesize_is_never_played_twice(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.stall_after_chunks = 3
    tts = make_tts()
    spoken, error = await _heard_until_error(tts.synthesize(" ".join(TEXT), conn_options=RETRY))
    # the framework retries a chunked stream by replaying its whole text: a retryable error
    # after audio would have played these three chunks again, and again
    assert isinstance(error, APITimeoutError) and not error.retryable
    assert _heard_once(spoken.pcm, TEXT)


async def test_a_stall_mid_sentence_without_streaming_is_never_played_twice(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # use_streaming=False: the framework splits sentences itself and calls synthesize()
    server.behavior.chunk_bytes = 320
    server.behavior.stall_after_chunks = 3
    adapter = lk_tts.StreamAdapter(tts=make_tts(use_streaming=False))
    stream = adapter.stream(conn_options=RETRY)
    stream.push_text(" ".join(TEXT))
    stream.end_input()
    spoken, error = await _heard_until_error(stream)
    assert isinstance(error, APIError) and not error.retryable
    assert _heard_once(spoken.pcm, TEXT)
    await adapter.aclose()


async def test_100_concurrent_syntheses_through_faults_are_each_heard_at_most_once(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # the shared socket dies twice under 100 replies in flight, and three of them stall
    # mid-sentence: every reply resumes where its listener stopped hearing or ends where it
    # was; none starts over
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.002
    server.behavior.drop_after_chunks = 4
    server.behavior.max_drops = 2
    texts = [(f"Reply number {n} begins here.", f"And reply {n} ends here.") for n in range(100)]
    stalling = {7, 42, 93}
    server.behavior.stall_after_chunks = 6
    server.behavior.stall_only = frozenset(texts[n][0] for n in stalling)
    tts = make_tts()
    results = await asyncio.gather(
        *(_heard_until_error(tts.synthesize(" ".join(t), conn_options=CROWDED)) for t in texts)
    )
    for n, ((heard, error), sentences) in enumerate(zip(results, texts, strict=True)):
        if n in stalling:
            assert isinstance(error, APITimeoutError) and not error.retryable
            assert _heard_once(heard.pcm, sentences)
        else:
            assert error is None and heard.digest == expected_digest(sentences)
    assert server.received.connections == 3


async def test_a_peer_that_upgrades_and_then_says_nothing_leaks_no_socket(
    make_tts: MakeTTS,
) -> None:
    # it agrees to knowlithic.v1 and never sends the capabilities that come first in it
    peer = DeafPeer(subprotocol=protocol.SUBPROTOCOL)
    await peer.start()
    try:
        tts = make_tts(base_url=peer.url, connect_timeout=0.3)
        tts._pool.connection()._backoff = Backoff(base=0.05, cap=0.1)
        tts.prewarm()
        await asyncio.sleep(1.5)  # attempt after attempt times out waiting for them
        assert peer.connections >= 3
        assert peer.open_connections <= 1  # only the attempt under way, if any
        await tts.aclose()
        await eventually(lambda: peer.open_connections == 0)
    finally:
        await peer.aclose()


async def test_shutting_down_on_an_old_socket_does_not_retire_the_new_one(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # a draining server refuses the sentences sent ahead, one after another; the first
    # refusal moves the reply to a new socket, and the later ones (on the old socket) must
    # not retire that one too: one shutdown, one reconnect
    sentences = [
        "Alpha one is the first sentence here.",
        "Bravo two follows with more words.",
        "Charlie three keeps going on and on.",
        "Delta four is near the end now.",
        "Echo five closes it.",
    ]
    refusal = protocol.error(protocol.ERR_SHUTTING_DOWN, "the server is shutting down")
    server.behavior.chunk_delay = 0.005
    server.behavior.error_for = {text: refusal for text in sentences[1:4]}
    server.behavior.max_errors = 3
    tts = make_tts(sentences_ahead=5)
    spoken = await speak(tts, " ".join(sentences), conn_options=PATIENT)
    assert spoken.digest == expected_digest(sentences)
    assert server.received.connections == 2


async def test_the_frameworks_pause_before_a_retry_cannot_outlast_the_timeout(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # busy at once, every time; the framework would sleep 5 s before each retry
    refusal = protocol.error(protocol.ERR_BUSY, "the server is at capacity")
    server.behavior.error_for = {TEXT[0]: refusal}
    options = APIConnectOptions(max_retry=3, retry_interval=5.0, timeout=2.0)
    tts = make_tts()
    started = time.perf_counter()
    with pytest.raises(APIStatusError) as info:
        await speak(tts, TEXT[0], conn_options=options)
    assert time.perf_counter() - started < options.timeout + 0.5
    assert info.value.status_code == 503 and "busy" in info.value.message  # what happened
    assert not info.value.retryable


async def test_a_request_sent_on_a_socket_that_was_reset_reports_the_loss_on_its_channel(
    server: FakeKnowlithicServer,
) -> None:
    # the reader of a request learns of a dead socket one way, whether the loss came while
    # it waited or while its request was being written: it then asks again elsewhere
    async with aiohttp.ClientSession() as session:
        conn = await connect(session, server.url, api_key=None, timeout=2.0, heartbeat=None)
        try:
            channel = await conn.open_request("r-0")
            await server.drop_connections()  # reset: no close frame
            request = protocol.TextToSpeech(
                request_id="r-0", text=TEXT[0], voice="elise", sample_rate=16000
            )
            await conn.send_request(channel, request)  # never raises
            event = await channel.receive(2.0)
            assert isinstance(event, ConnectionLost)
            assert channel.finished and channel.lost
        finally:
            await conn.aclose()
