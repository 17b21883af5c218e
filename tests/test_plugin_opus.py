"""The plugin with ``output_format="opus"``: negotiation, fallback, decoding, bad pages.

Against the fake server, which encodes its deterministic "speech" with the protocol's own
Opus encoder; tests/server/test_opus.py runs the same against the real server and Piper.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from livekit.agents import APIConnectOptions, APIStatusError

import knowlithic_protocol as protocol
from tests.conftest import MakeTTS
from tests.fake_knowlithic import FakeKnowlithicServer, speech_for
from tests.plugin_helpers import (
    eventually,
    expected_digest,
    interrupt_after_first_audio,
    speak,
    synthesize,
)

FIRST = "Hello there, this is the first sentence."
SECOND = "And this one is the second sentence."
NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)


def seconds_of(sentences: list[str], rate: int = 16000) -> float:
    return sum(len(speech_for(s, rate)) for s in sentences) / 2 / rate


def assert_is_the_speech_of(pcm: bytes, sentences: list[str], rate: int = 16000) -> None:
    """Lossy, so not the same bytes: the same length, and the same loudness."""
    got = np.frombuffer(pcm, dtype="<i2").astype(float)
    expected = np.frombuffer(b"".join(speech_for(s, rate) for s in sentences), dtype="<i2")
    assert abs(len(got) - len(expected)) <= rate // 100  # within 10 ms
    assert 0.5 < got.std() / expected.astype(float).std() < 1.5


async def test_opus_is_asked_for_and_decoded_into_the_same_frames(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts(output_format="opus")
    spoken = await speak(tts, FIRST + " ", SECOND)
    assert {r.output_format for r in server.received.requests} == {"opus"}
    assert spoken.sample_rates == {16000}
    assert_is_the_speech_of(spoken.pcm, [FIRST, SECOND])
    chunked = await synthesize(tts, FIRST)
    assert_is_the_speech_of(chunked.pcm, [FIRST])


async def test_opus_at_a_rate_opus_lacks_is_resampled_back_to_the_rate_asked(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts(output_format="opus", sample_rate=22050)
    spoken = await speak(tts, FIRST)
    assert spoken.sample_rates == {22050}  # carried at 24 kHz, played at the rate asked
    assert abs(len(spoken.pcm) / 2 / 22050 - seconds_of([FIRST], 22050)) < 0.02


async def test_a_server_that_does_not_list_opus_gets_pcm_and_the_log_says_so_once(
    server: FakeKnowlithicServer, make_tts: MakeTTS, caplog: pytest.LogCaptureFixture
) -> None:
    server.behavior.output_formats = ("pcm", "wav")
    tts = make_tts(output_format="opus")
    with caplog.at_level(logging.INFO, logger="tts_custom.knowlithic"):
        for _ in range(3):
            spoken = await speak(tts, FIRST)
            assert spoken.digest == expected_digest([FIRST])  # PCM: the very same bytes
    assert {r.output_format for r in server.received.requests} == {"pcm"}
    said = [r for r in caplog.records if "does not offer opus" in r.getMessage()]
    assert len(said) == 1


async def test_a_legacy_server_is_never_asked_for_opus(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.subprotocol = False  # no capabilities: it may not know the format
    tts = make_tts(output_format="opus")
    spoken = await speak(tts, FIRST)
    assert spoken.digest == expected_digest([FIRST])
    assert {r.output_format for r in server.received.requests} == {"pcm"}


async def test_a_corrupt_page_fails_that_reply_and_the_socket_serves_the_next(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.corrupt_payload = 2
    tts = make_tts(output_format="opus")
    with pytest.raises(APIStatusError, match=r"cannot be played.*CRC"):
        await speak(tts, FIRST, conn_options=NO_RETRY)
    server.behavior.corrupt_payload = None
    spoken = await speak(tts, SECOND)
    assert_is_the_speech_of(spoken.pcm, [SECOND])
    assert server.received.connections == 1


async def test_a_truncated_stream_fails_that_reply_and_the_socket_serves_the_next(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.truncate_last_payload = 5  # the last page ends short: a broken file
    tts = make_tts(output_format="opus")
    with pytest.raises(APIStatusError, match="truncated"):
        await speak(tts, FIRST, conn_options=NO_RETRY)
    server.behavior.truncate_last_payload = 0
    spoken = await speak(tts, SECOND)
    assert_is_the_speech_of(spoken.pcm, [SECOND])
    assert server.received.connections == 1


async def test_an_interrupted_opus_reply_leaves_nothing_for_the_next_turn(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_delay = 0.02
    tts = make_tts(output_format="opus")
    await interrupt_after_first_audio(tts, FIRST + " " + SECOND)
    await eventually(lambda: len(server.received.cancels) >= 1)
    server.behavior.chunk_delay = 0.0
    spoken = await speak(tts, "A fresh answer after the interruption.")
    assert_is_the_speech_of(spoken.pcm, ["A fresh answer after the interruption."])
    assert server.received.connections == 1


async def test_word_timestamps_come_with_opus_as_with_pcm(make_tts: MakeTTS) -> None:
    tts = make_tts(output_format="opus")
    spoken = await speak(tts, FIRST)
    words = [str(piece).strip() for piece in spoken.timed]
    assert "".join(words).replace(" ", "") == FIRST.replace(" ", "")


def test_the_plugin_refuses_a_format_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="output_format"):
        from tts_custom.knowlithictts import TTS

        TTS(base_url="ws://localhost:1", output_format="flac")  # type: ignore[arg-type]
    assert "opus" in protocol.OUTPUT_FORMATS
