"""The HTTP transport keeps every promise the WebSocket path makes, through a real socket.

The server is :mod:`tests.fake_http` (an OpenAI-style ``POST /v1/audio/speech`` on
127.0.0.1): each fault is what a real server or proxy does on the wire (a refusal, a busy
503, a connection cut mid-body, a response that stalls, a body cut into any pieces), and each
reply is checked by its audio's digest, never by how long it took.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
)
from livekit.agents.tts import TTSError

import knowlithic_protocol as protocol
from knowlithic_protocol.http import STREAM_HEADER
from tests.fake_http import FakeHttpServer, HttpBehavior
from tests.fake_knowlithic import speech_for, wav_header
from tests.loopback import free_port
from tests.plugin_helpers import (
    LONG_REPLY,
    SHORT,
    eventually,
    expected_digest,
    interrupt_after_first_audio,
    loudness,
    speak,
    synthesize,
)
from tts_custom import http_speech
from tts_custom.http_transport import HttpTransport
from tts_custom.knowlithictts import TTS
from tts_custom.wav_splitter import WavSplitter

TEXT = ("A sentence that must be heard once.", "And the one after it, once too.")
FAST_RETRY = APIConnectOptions(max_retry=2, retry_interval=0.05, timeout=2.0)
NO_RETRY = APIConnectOptions(max_retry=0, timeout=0.5)
SECRET = "sk-test-3f9a1c77b2e84d0e"
MakeHttpTTS = Callable[..., TTS]
LONG_REPLY_SENTENCES = [sentence + "." for sentence in LONG_REPLY.rstrip(".").split(". ")]


@pytest.fixture
async def http_server() -> AsyncIterator[FakeHttpServer]:
    srv = FakeHttpServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def make_http_tts(http_server: FakeHttpServer) -> AsyncIterator[MakeHttpTTS]:
    made: list[TTS] = []

    def make(**kwargs: Any) -> TTS:
        kwargs.setdefault("base_url", http_server.url)
        kwargs.setdefault("transport", "http")
        tts = TTS(**kwargs)
        made.append(tts)
        return tts

    yield make
    for tts in made:
        await tts.aclose()


def sentences(server: FakeHttpServer) -> list[str]:
    """The texts the server rendered in full, in the order the replies play them."""
    return server.received.completed


def collect_errors(tts: TTS) -> list[TTSError]:
    errors: list[TTSError] = []
    tts.on("error", errors.append)
    return errors


# -- audio -------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["pcm", "wav"])
async def test_speaks_a_reply_sentence_by_sentence_over_http(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS, output_format: str
) -> None:
    tts = make_http_tts(output_format=output_format)
    assert not tts.capabilities.aligned_transcript  # known before any session reads it
    spoken = await speak(tts, LONG_REPLY)
    texts = http_server.received.texts
    assert len(texts) == 6  # one request per sentence
    assert spoken.digest == expected_digest(texts)
    request = http_server.received.requests[0]
    assert request["response_format"] == output_format
    assert (request["voice"], request["sample_rate"], request["model"]) == (
        "elise",
        16000,
        "knowlithic",
    )
    assert not tts.capabilities.aligned_transcript  # no word timings over HTTP


async def test_synthesize_and_concurrent_streams_each_get_their_own_audio(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    http_server.behavior = HttpBehavior(chunk_bytes=640, chunk_delay=0.001)
    tts = make_http_tts()
    whole, first, second = await asyncio.gather(
        synthesize(tts, LONG_REPLY), speak(tts, TEXT[0]), speak(tts, TEXT[1])
    )
    assert whole.digest == expected_digest(list(dict.fromkeys(LONG_REPLY_SENTENCES)))
    assert first.digest == expected_digest([TEXT[0]])
    assert second.digest == expected_digest([TEXT[1]])


async def test_opus_over_http_decodes_to_the_same_speech(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    # OpenAI's API defines opus: it is asked for without capabilities that list it
    tts = make_http_tts(output_format="opus")
    spoken = await speak(tts, TEXT[0])
    assert http_server.received.requests[0]["response_format"] == "opus"
    reference = speech_for(TEXT[0], 16000)
    assert abs(len(spoken.pcm) - len(reference)) <= 2 * 320
    got, want = loudness(spoken.pcm), loudness(reference)
    n = min(len(got), len(want))
    assert np.corrcoef(got[:n], want[:n])[0, 1] > 0.5


@pytest.mark.parametrize("chunk_bytes", [1, 7, 333, 1 << 20], ids=["1", "7", "odd", "huge"])
@pytest.mark.parametrize("wav", ["once", "absent", "per_chunk"])
async def test_any_body_shape_plays_the_same_samples(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS, chunk_bytes: int, wav: str
) -> None:
    """A WAV header split across chunks, repeated inside the body or absent; odd byte
    counts; chunks of one byte or one megabyte: the same samples, none shifted."""
    if wav == "per_chunk" and chunk_bytes < 64:
        chunk_bytes = 64 + 1  # a header per chunk needs room for audio (and an odd count)
    http_server.behavior = HttpBehavior(chunk_bytes=chunk_bytes, wav=wav)  # type: ignore[arg-type]
    tts = make_http_tts(output_format="wav")
    spoken = await speak(tts, *TEXT)
    assert spoken.digest == expected_digest(http_server.received.texts)


async def test_raw_pcm_without_a_stated_rate_is_24_khz_as_openai_defines_it(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    http_server.behavior = HttpBehavior(state_rate=False, actual_sample_rate=24000)
    tts = make_http_tts(output_format="pcm", sample_rate=24000)
    spoken = await speak(tts, TEXT[0])
    assert spoken.digest == expected_digest([TEXT[0]], 24000)
    # and at 16 kHz it is resampled, not played 1.5 times too slow
    tts16 = make_http_tts(output_format="pcm")
    spoken16 = await speak(tts16, TEXT[0])
    assert abs(len(spoken16.pcm) - len(speech_for(TEXT[0], 16000))) <= 2 * 160


async def test_audio_in_a_format_the_plugin_cannot_play_is_a_clear_error(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    http_server.behavior = HttpBehavior(content_type="audio/aac")
    tts = make_http_tts()
    with pytest.raises(APIStatusError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    assert "audio/aac" in info.value.message and not info.value.retryable
    assert len(http_server.received.requests) == 1


def test_the_splitter_starts_a_payload_at_every_embedded_header() -> None:
    header = wav_header(16000, 0xFFFFFFFF)
    pcm = speech_for("a few words of speech", 16000)
    body = header + pcm[:2001] + header + pcm[2001:] + header + b"RIFF"
    for size in range(1, 50):
        splitter = WavSplitter()
        pieces = [p for i in range(0, len(body), size) for p in splitter.feed(body[i : i + size])]
        pieces.append(splitter.finish())
        assert b"".join(pieces) == body
        starts = [p for p in pieces if p.startswith(header[:12])]
        assert len(starts) == 3, size  # each header begins a payload, however the body was cut


# -- connections -------------------------------------------------------------------------------


async def test_connecting_warms_kept_alive_connections_the_sentences_reuse(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    tts = make_http_tts()
    tts.prewarm()
    await eventually(lambda: tts._pool.current is not None)
    warmed = len(http_server.received.connections)
    assert warmed == 4  # the sentence playing and the three sent ahead
    await speak(tts, LONG_REPLY)
    await speak(tts, SHORT)
    assert len(http_server.received.connections) == warmed  # no handshake for any sentence
    assert isinstance(tts._pool.current, HttpTransport)


async def test_a_kept_alive_connection_closed_under_a_request_is_retried_unnoticed(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    tts = make_http_tts()
    await speak(tts, TEXT[0])
    transport = tts._pool.current
    http_server.behavior = HttpBehavior(reset_before_answer=1)
    errors = collect_errors(tts)
    spoken = await speak(tts, TEXT[1])
    assert spoken.digest == expected_digest([TEXT[1]])
    assert http_server.received.texts == [TEXT[0], TEXT[1], TEXT[1]]  # sent once more
    assert errors == [] and tts._pool.current is transport  # not taken for a lost server


async def test_idle_keep_warm_requests_notice_a_server_gone_and_reopen_when_it_returns(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    tts = make_http_tts(heartbeat=0.05)
    await speak(tts, TEXT[0])
    old = tts._pool.current
    assert old is not None
    probes = http_server.received.probes
    await eventually(lambda: http_server.received.probes >= probes + 2)  # kept warm while idle
    await http_server.stop()
    await eventually(lambda: old.closed)  # noticed with nobody speaking
    await http_server.start()  # same port
    await eventually(lambda: tts._pool.current not in (None, old))  # reopened in the background
    requests = len(http_server.received.requests)
    assert (await speak(tts, TEXT[1])).digest == expected_digest([TEXT[1]])
    assert len(http_server.received.requests) == requests + 1


async def test_an_unreachable_server_is_a_connection_error_as_over_the_websocket(
    make_http_tts: MakeHttpTTS,
) -> None:
    tts = make_http_tts(base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(APIConnectionError) as info:
        await speak(tts, TEXT[0], conn_options=NO_RETRY)
    assert "cannot connect to Knowlithic TTS" in info.value.message


@pytest.mark.parametrize("upgrade_answer", [404, 200])
async def test_a_server_without_websocket_is_spoken_to_over_http_and_said_once(
    http_server: FakeHttpServer, caplog: pytest.LogCaptureFixture, upgrade_answer: int
) -> None:
    # 200: a web server that ignores the Upgrade header and serves a page
    http_server.behavior = HttpBehavior(page_for_upgrade=upgrade_answer == 200)
    caplog.set_level(logging.INFO, logger="tts_custom.knowlithic")
    tts = TTS(base_url=http_server.url)  # the default transport: websocket
    try:
        first = await speak(tts, TEXT[0])
        tts._pool.connection().invalidate()  # the next turn connects again
        second = await speak(tts, TEXT[1])
    finally:
        await tts.aclose()
    assert first.digest == expected_digest([TEXT[0]])
    assert second.digest == expected_digest([TEXT[1]])
    refused = f"refused the WebSocket upgrade (HTTP {upgrade_answer})"
    said = [r for r in caplog.records if refused in r.message]
    assert len(said) == 1


async def test_the_transport_can_be_changed_for_later_streams(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    tts = make_http_tts(transport="websocket", base_url=http_server.url.replace("http", "ws"))
    tts.update_options(transport="http")
    assert (await speak(tts, TEXT[0])).digest == expected_digest([TEXT[0]])
    assert tts._opts.transport == "http"
    with pytest.raises(ValueError, match="transport must be one of"):
        TTS(base_url=http_server.url, transport="grpc")  # type: ignore[arg-type]


# -- faults ------------------------------------------------------------------------------------


async def test_an_interruption_closes_the_response_and_no_stale_audio_reaches_the_next_turn(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    http_server.behavior = HttpBehavior(chunk_bytes=640, chunk_delay=0.01)
    tts = make_http_tts()
    await interrupt_after_first_audio(tts, LONG_REPLY)
    # the server saw the client go: its synthesis can stop at once
    await eventually(lambda: bool(http_server.received.abandoned))
    http_server.behavior = HttpBehavior()
    spoken = await speak(tts, SHORT)
    assert spoken.digest == expected_digest([SHORT])


async def test_after_an_interruption_the_closed_connections_are_reopened_before_the_next_turn(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    # closing a response closes its connection: the next turn must not pay a handshake
    http_server.behavior = HttpBehavior(chunk_bytes=640, chunk_delay=0.01)
    tts = make_http_tts()
    await speak(tts, SHORT)
    probes = http_server.received.probes
    await interrupt_after_first_audio(tts, LONG_REPLY)
    await eventually(lambda: http_server.received.probes > probes)  # reopened at once
    await asyncio.sleep(0.1)  # the caller is still talking: every reopen has finished
    opened = len(http_server.received.connections)
    http_server.behavior = HttpBehavior()
    spoken = await speak(tts, SHORT)
    assert spoken.digest == expected_digest([SHORT])
    assert len(http_server.received.connections) == opened  # no new connection for it


async def test_each_reply_names_its_stream_and_the_default_rate_is_not_sent(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    # the stream lets our server admit a reply as a whole (its later sentences are never
    # refused); both travel where OpenAI's own API, which refuses unknown fields, ignores them
    tts = make_http_tts(sample_rate=24000)
    await speak(tts, LONG_REPLY)
    first_reply = len(http_server.received.requests)
    await speak(tts, SHORT)
    streams = [h.get(STREAM_HEADER) for h in http_server.received.headers]
    assert None not in streams
    assert len(set(streams[:first_reply])) == 1 and len(set(streams[first_reply:])) == 1
    assert streams[0] != streams[-1]
    assert all("sample_rate" not in body for body in http_server.received.requests)
    await speak(make_http_tts(sample_rate=16000), SHORT)
    assert http_server.received.requests[-1]["sample_rate"] == 16000


async def test_a_busy_server_before_the_first_audio_is_retried_with_no_text_lost(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    http_server.behavior = HttpBehavior(status=503, retry_after="1", max_errors=1)
    tts = make_http_tts()
    errors = collect_errors(tts)
    spoken = await speak(tts, TEXT[0] + " ", TEXT[1], conn_options=FAST_RETRY)
    assert spoken.digest == expected_digest(TEXT)
    assert [e.recoverable for e in errors] == [True]  # the framework's retry


async def test_a_connection_cut_mid_reply_resumes_with_no_sentence_lost_or_repeated(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    second_sentence = "The second sentence follows it and goes on for a few seconds too."
    http_server.behavior = HttpBehavior(
        chunk_bytes=640, drop_after_chunks=3, drop_only=frozenset({second_sentence}), max_drops=1
    )
    tts = make_http_tts()
    errors = collect_errors(tts)
    spoken = await speak(tts, LONG_REPLY, conn_options=FAST_RETRY)
    replies = list(dict.fromkeys(http_server.received.texts))  # each sentence, in order
    assert len(replies) == 6
    assert spoken.digest == expected_digest(replies)
    assert http_server.received.texts.count(second_sentence) == 2  # asked for again
    assert errors == []  # resumed by the plugin, not retried by the framework


async def test_the_server_restarting_between_turns_is_waited_for(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    tts = make_http_tts()
    await speak(tts, TEXT[0])
    await http_server.stop()
    await http_server.start()  # same port
    spoken = await speak(tts, TEXT[1], conn_options=FAST_RETRY)
    assert spoken.digest == expected_digest([TEXT[1]])


async def test_a_stalled_response_is_a_timeout_and_is_closed(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    http_server.behavior = HttpBehavior(stall_after_chunks=0)
    tts = make_http_tts()
    with pytest.raises(APITimeoutError) as info:
        await speak(tts, TEXT[0], conn_options=NO_RETRY)
    assert not info.value.retryable
    await eventually(lambda: http_server.received.abandoned == [TEXT[0]])
    http_server.behavior = HttpBehavior()
    assert (await speak(tts, TEXT[0])).digest == expected_digest([TEXT[0]])


@pytest.mark.parametrize(
    ("status", "code", "expected_status"),
    [(400, "unknown_voice", 404), (400, None, 400), (422, None, 400), (404, None, 400)],
)
async def test_a_4xx_is_a_clear_error_that_is_not_retried(
    http_server: FakeHttpServer,
    make_http_tts: MakeHttpTTS,
    status: int,
    code: str | None,
    expected_status: int,
) -> None:
    http_server.behavior = HttpBehavior(status=status, error_code=code)
    tts = make_http_tts()
    with pytest.raises(APIStatusError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    assert f"refused by the test ({status})" in info.value.message  # the server's own words
    assert info.value.status_code == expected_status and not info.value.retryable
    assert len(http_server.received.requests) == 1


async def test_a_refused_key_fails_at_once_and_the_key_is_never_logged(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http_server.behavior = HttpBehavior(api_key="the-right-key")
    tts = make_http_tts(api_key=SECRET)
    with pytest.raises(APIStatusError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    assert info.value.status_code == 401 and not info.value.retryable
    assert "KNOWLITHIC_API_KEY" in info.value.message
    # with the right key, through a cut connection too: still nowhere in the logs
    http_server.behavior = HttpBehavior(
        api_key=SECRET, chunk_bytes=640, drop_after_chunks=1, max_drops=1
    )
    await speak(tts, LONG_REPLY, conn_options=FAST_RETRY)
    assert http_server.received.headers[-1]["Authorization"] == f"Bearer {SECRET}"
    for text in (str(info.value), caplog.text, repr(tts._opts)):
        assert SECRET not in text


async def test_a_key_refused_per_request_is_named(
    http_server: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    # a server whose /v1/models needs no key (or has none) refuses the speech request itself
    http_server.behavior = HttpBehavior(status=401, error_code="invalid_api_key")
    tts = make_http_tts(api_key=SECRET)
    with pytest.raises(APIStatusError) as info:
        await synthesize(tts, TEXT[0], conn_options=FAST_RETRY)
    assert info.value.status_code == 401 and not info.value.retryable
    assert "refused the API key" in info.value.message


# -- several servers ---------------------------------------------------------------------------


@pytest.fixture
async def spare() -> AsyncIterator[FakeHttpServer]:
    srv = FakeHttpServer()
    await srv.start()
    yield srv
    await srv.stop()


async def test_a_busy_server_moves_the_reply_to_the_next_one(
    http_server: FakeHttpServer, spare: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    http_server.behavior = HttpBehavior(status=503, retry_after="2")
    tts = make_http_tts(base_url=f"{http_server.url},{spare.url}")
    errors = collect_errors(tts)
    spoken = await speak(tts, TEXT[0] + " ", TEXT[1], conn_options=FAST_RETRY)
    assert spoken.digest == expected_digest(TEXT)
    assert spare.received.completed == list(TEXT)
    assert errors == []


async def test_a_server_dying_mid_reply_hands_the_rest_to_the_next_one(
    http_server: FakeHttpServer, spare: FakeHttpServer, make_http_tts: MakeHttpTTS
) -> None:
    second_sentence = "The second sentence follows it and goes on for a few seconds too."
    http_server.behavior = HttpBehavior(
        chunk_bytes=640, drop_after_chunks=3, drop_only=frozenset({second_sentence})
    )
    tts = make_http_tts(base_url=f"{http_server.url},{spare.url}")
    spoken = await speak(tts, LONG_REPLY, conn_options=FAST_RETRY)
    heard = list(dict.fromkeys(http_server.received.texts + spare.received.texts))
    assert spoken.digest == expected_digest(heard)
    assert second_sentence in spare.received.completed


# -- the mapping, without a socket -------------------------------------------------------------


def test_base_urls_keep_their_meaning_over_http() -> None:
    for base, speech in [
        ("ws://h:8000", "http://h:8000/v1/audio/speech"),
        ("wss://h/v1/tts", "https://h/v1/audio/speech"),
        ("https://api.example.com/v1", "https://api.example.com/v1/audio/speech"),
        ("http://h:8000/tts/", "http://h:8000/tts/v1/audio/speech"),
    ]:
        assert http_speech.Endpoints.of(base).speech == speech


def test_refusals_map_to_the_protocols_errors() -> None:
    def refusal(status: int, code: str | None = None) -> protocol.Error:
        body = b'{"error": {"message": "m", "code": "%s"}}' % (code or "x").encode()
        return http_speech.refusal(status, body, "r")

    assert (refusal(503).code, refusal(503).retryable) == (protocol.ERR_BUSY, True)
    assert refusal(503, "shutting_down").code == protocol.ERR_SHUTTING_DOWN
    assert (refusal(429).code, refusal(429).retryable) == (protocol.ERR_RATE_LIMITED, True)
    assert (refusal(500).code, refusal(500).retryable) == (protocol.ERR_INTERNAL, True)
    assert (refusal(400).code, refusal(400).retryable) == (protocol.ERR_BAD_REQUEST, False)
    assert refusal(404, "unknown_voice").code == protocol.ERR_UNKNOWN_VOICE
    assert not refusal(401).retryable and "KNOWLITHIC_API_KEY" in refusal(401).message
    assert "no POST /v1/audio/speech" in http_speech.refusal(404, b"", "r").message
