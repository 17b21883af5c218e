"""Each failure maps to the framework's error contract, and none leaks the API key."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
)
from livekit.agents.tts import TTSError

import knowlithic_protocol as protocol
from tests.conftest import MakeTTS
from tests.fake_knowlithic import FakeKnowlithicServer
from tests.loopback import free_port
from tests.plugin_helpers import expected_digest, speak, synthesize
from tts_custom.knowlithictts import TTS

TEXT = ("A sentence that must be heard once.", "And the one after it, once too.")
FAST_RETRY = APIConnectOptions(max_retry=2, retry_interval=0.05, timeout=2.0)
NO_RETRY = APIConnectOptions(max_retry=0, timeout=1.0)
SECRET = "sk-test-3f9a1c77b2e84d0e"


def collect_errors(tts: TTS) -> list[TTSError]:
    errors: list[TTSError] = []
    tts.on("error", errors.append)
    return errors


async def test_a_refused_connection_waits_for_the_server_then_says_it_cannot_connect(
    make_tts: MakeTTS,
) -> None:
    tts = make_tts(base_url=f"ws://127.0.0.1:{free_port()}")
    errors = collect_errors(tts)
    started = time.monotonic()
    with pytest.raises(APIConnectionError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    waited = time.monotonic() - started
    # it waited the reply's whole patience for a restart, once: the framework's retries did
    # not add theirs, since the error that ended the wait is final
    assert FAST_RETRY.timeout - 0.1 <= waited < FAST_RETRY.timeout + 0.5
    assert not info.value.retryable
    assert "cannot connect" in str(info.value)
    assert [e.recoverable for e in errors] == [False]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_5xx_handshake_is_tried_again_then_named(
    status: int, server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.handshake_status = status
    tts = make_tts()
    with pytest.raises(APIConnectionError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    assert f"HTTP {status}" in str(info.value) and not info.value.retryable
    # tried again and again within the 2 s, with backoff (0.1-0.2 s, doubling, at most
    # 1 s apart while a reply waits): neither once nor a storm
    assert 3 <= len(server.received.handshake_headers) <= 7


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_key_fails_at_once_and_says_so(
    status: int, server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.handshake_status = status
    tts = make_tts(api_key=SECRET)
    with pytest.raises(APIStatusError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    assert info.value.status_code == status and not info.value.retryable
    assert "refused the API key" in str(info.value)
    assert len(server.received.handshake_headers) == 1


async def test_a_429_handshake_is_tried_again_then_named(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.handshake_status = 429
    tts = make_tts()
    with pytest.raises(APIStatusError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    assert info.value.status_code == 429 and not info.value.retryable
    assert 3 <= len(server.received.handshake_headers) <= 7


async def test_no_audio_within_the_timeout_is_a_timeout(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.stall = True
    tts = make_tts()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(APITimeoutError):
        await speak(tts, TEXT[0], conn_options=NO_RETRY)
    assert loop.time() - started < 2.0


async def test_a_stall_ends_the_reply_within_its_timeout_and_the_socket_stays_usable(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.stall = True
    tts = make_tts()
    # the framework would retry three times, each after its own full timeout: 4+ s of silence
    options = APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(APITimeoutError) as info:
        await speak(tts, TEXT[0], conn_options=options)
    assert time.monotonic() - started < options.timeout + 0.5
    assert not info.value.retryable
    assert len(server.received.requests) == 1
    server.behavior.stall = False
    spoken = await speak(tts, TEXT[0])
    assert spoken.digest == expected_digest([TEXT[0]])
    assert server.received.cancels  # the stalled request was cancelled, not left open


async def test_a_reset_before_the_first_audio_is_retried_with_no_text_lost(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.drop_after_chunks = 0
    server.behavior.max_drops = 1  # the next attempt goes through
    tts = make_tts()
    errors = collect_errors(tts)
    spoken = await speak(tts, TEXT[0] + " ", TEXT[1], conn_options=FAST_RETRY)
    assert spoken.digest == expected_digest(TEXT)
    assert [e.recoverable for e in errors] == [True]  # the framework's retry
    assert server.received.connections == 2


async def test_synthesize_is_retried_after_a_reset_too(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.drop_after_chunks = 0
    server.behavior.max_drops = 1
    tts = make_tts()
    spoken = await synthesize(tts, " ".join(TEXT), conn_options=FAST_RETRY)
    assert spoken.digest == expected_digest(TEXT)


async def test_a_reset_mid_sentence_resumes_where_the_user_stopped_hearing(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # the server dies after three chunks of the first sentence were played
    server.behavior.drop_after_chunks = 3
    server.behavior.max_drops = 1
    server.behavior.chunk_bytes = 320
    tts = make_tts()
    errors = collect_errors(tts)
    spoken = await speak(tts, " ".join(TEXT), conn_options=FAST_RETRY)
    # byte for byte the reply, once: nothing lost, nothing heard twice
    assert spoken.digest == expected_digest(TEXT)
    assert errors == [] and server.received.connections == 2
    first_sentence_requests = [r for r in server.received.requests if r.text == TEXT[0]]
    assert len(first_sentence_requests) == 2


async def test_a_pipelined_sentence_refused_as_busy_is_asked_for_again(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.error_for = {TEXT[1]: protocol.error(protocol.ERR_BUSY, "full")}
    server.behavior.max_errors = 1
    tts = make_tts()
    spoken = await speak(tts, " ".join(TEXT), conn_options=FAST_RETRY)
    assert spoken.digest == expected_digest(TEXT)
    assert [r.text for r in server.received.requests].count(TEXT[1]) == 2


async def test_a_reset_that_keeps_happening_reaches_the_session(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.drop_after_chunks = 2
    server.behavior.chunk_bytes = 320
    tts = make_tts()
    with pytest.raises(APIConnectionError):
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    server.behavior.drop_after_chunks = None
    spoken = await speak(tts, TEXT[1])  # and the next turn works
    assert spoken.digest == expected_digest([TEXT[1]])


@pytest.mark.parametrize(
    ("code", "retryable", "status"),
    [
        (protocol.ERR_UNKNOWN_VOICE, False, 404),
        (protocol.ERR_TEXT_TOO_LONG, False, 400),
        (protocol.ERR_BUSY, True, 503),
        (protocol.ERR_RATE_LIMITED, True, 429),
    ],
)
async def test_server_errors_map_to_status_errors(
    code: str,
    retryable: bool,
    status: int,
    server: FakeKnowlithicServer,
    make_tts: MakeTTS,
) -> None:
    server.behavior.error_for = {TEXT[0]: protocol.error(code, "told by the test")}
    tts = make_tts()
    with pytest.raises(APIStatusError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    assert info.value.status_code == status and info.value.retryable is retryable
    assert code in str(info.value) and "told by the test" in str(info.value)
    assert len(server.received.requests) == (3 if retryable else 1)


async def test_a_voice_the_server_lacks_is_refused_before_sending(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts(voice="nobody")
    with pytest.raises(APIStatusError) as info:
        await speak(tts, TEXT[0], conn_options=FAST_RETRY)
    assert not info.value.retryable
    assert "'nobody'" in str(info.value) and "elise, joe" in str(info.value)
    assert server.received.requests == []


async def test_the_key_is_sent_in_a_header_and_never_leaks(
    server: FakeKnowlithicServer, make_tts: MakeTTS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.behavior.api_key = SECRET
    tts = make_tts(api_key=SECRET)
    await speak(tts, TEXT[0])
    assert server.received.handshake_headers[0]["Authorization"] == f"Bearer {SECRET}"

    wrong = make_tts(api_key=SECRET[::-1])
    with pytest.raises(APIError) as info:
        await speak(wrong, TEXT[0], conn_options=FAST_RETRY)
    for text in (str(info.value), repr(info.value), caplog.text, repr(tts._opts)):
        assert SECRET not in text and SECRET[::-1] not in text
    assert "?" not in server.received.handshake_headers[0].get("Host", "")


async def test_the_key_comes_from_the_environment(
    server: FakeKnowlithicServer, make_tts: MakeTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNOWLITHIC_API_KEY", SECRET)
    server.behavior.api_key = SECRET
    await speak(make_tts(), TEXT[0])


async def test_a_key_in_the_url_travels_in_the_header_and_not_in_the_url(
    server: FakeKnowlithicServer, make_tts: MakeTTS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.behavior.api_key = SECRET
    tts = make_tts(base_url=f"{server.url}/?region=eu&api_key={SECRET}")
    await speak(tts, TEXT[0])
    assert server.received.handshake_targets == ["/?region=eu"]
    assert server.received.handshake_headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(tts._opts) and SECRET not in caplog.text


@pytest.mark.parametrize(
    ("base_url", "api_key", "problem"),
    [
        (f"ws://avery:{SECRET}@localhost:8000", None, "must not carry credentials"),
        (f"ws://localhost:8000/?token={SECRET}&key=other", None, "more than one API key"),
        (f"ws://localhost:8000/?api_key={SECRET}", "another-key", "differs from api_key"),
        ("ws://localhost:8000", f"{SECRET}\r\nX-Injected: 1", "line break"),
        ("ws://localhost:8000", f"{SECRET} x", "space"),
    ],
    ids=["userinfo", "two keys", "two different keys", "line break", "space"],
)
def test_a_key_that_cannot_travel_safely_is_refused_when_the_tts_is_built(
    base_url: str, api_key: str | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        TTS(base_url=base_url, api_key=api_key)
    assert SECRET not in str(info.value)


def test_missing_server_url_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KNOWLITHIC_TTS_SERVER", raising=False)
    monkeypatch.delenv("TTS_SERVER_URL", raising=False)
    with pytest.raises(ValueError, match="KNOWLITHIC_TTS_SERVER or TTS_SERVER_URL"):
        TTS()


def test_server_url_falls_back_to_tts_server_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KNOWLITHIC_TTS_SERVER", raising=False)
    monkeypatch.setenv("TTS_SERVER_URL", "https://tts.example.com:8443/v1/tts")
    assert TTS()._opts.urls == ("wss://tts.example.com:8443/v1/tts",)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("ws://localhost:8000", "ws://localhost:8000"),
        ("wss://tts.example.com", "wss://tts.example.com"),
        ("http://localhost:8000/", "ws://localhost:8000/"),
        ("HTTPS://tts.example.com/ws", "wss://tts.example.com/ws"),
    ],
)
def test_url_schemes(given: str, used: str) -> None:
    assert TTS(base_url=given)._opts.urls == (used,)


def test_a_comma_separated_list_names_servers_in_order_of_preference() -> None:
    tts = TTS(base_url=" ws://a:8000 , http://b:8000/tts,wss://c?api_key=k1")
    assert tts._opts.urls == ("ws://a:8000", "ws://b:8000/tts", "wss://c")
    assert tts._opts.api_key == "k1"  # a key in one URL is the key for all


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("ws://a:8000,,ws://b:8000", "empty entry"),
        ("ws://a:8000,", "empty entry"),
        ("ws://a:8000,ftp://b", "ws://host:port"),
        ("ws://a:8000,ws://a:8000", "twice"),
        ("ws://a?api_key=k1,ws://b?api_key=k2", "different API keys"),
    ],
)
def test_bad_server_lists_are_refused(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        TTS(base_url=bad)


@pytest.mark.parametrize("bad", ["ftp://host", "localhost:8000", "ws://", "not a url"])
def test_bad_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="ws://host:port"):
        TTS(base_url=bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 20.0},
        {"sample_rate": 96000},
        {"output_format": "flac"},
        {"sentences_ahead": 0},
        {"transport": "grpc"},
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TTS(base_url="ws://localhost:8000", **kwargs)  # type: ignore[arg-type]
