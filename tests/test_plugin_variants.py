"""Every server variant the seeds show, played byte-exact (or at the right speed)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from livekit.agents import APIStatusError

from knowlithic_protocol.formats import AudioFormatError
from knowlithic_protocol.formats.wav import WavDecoder
from tests.conftest import MakeTTS
from tests.fake_knowlithic import SECONDS_PER_CHAR, FakeKnowlithicServer, wav_header
from tests.plugin_helpers import Spoken, expected_digest, speak

TEXT = ("The first sentence of the reply.", "A second one follows right after.")

VARIANTS: dict[str, dict[str, Any]] = {
    "v1 tagged binary, wav per request": {},
    "v1 tagged binary, raw pcm": {"payload": "pcm"},
    "v1 base64 json": {"transport": "base64"},
    "legacy base64 audio_data": {"subprotocol": False},
    "legacy base64 data field": {"subprotocol": False, "audio_field": "data"},
    "legacy untagged json": {"subprotocol": False, "tag_messages": False},
    "legacy untagged binary": {"subprotocol": False, "transport": "binary", "tag_messages": False},
    "wav header on every message": {"payload": "wav_per_message"},
    "wav with a LIST chunk before data": {"wav_extra_chunk": b"LIST\x04\x00\x00\x00INFO"},
    "wav with a sized data chunk and a trailer": {"wav_trailer": b"LIST\x08\x00\x00\x00junkjunk"},
    "per-message wav with trailers": {"payload": "wav_per_message", "wav_trailer": b"id3 \x00"},
    "odd byte counts split samples": {"payload": "pcm", "chunk_bytes": 1601},
    "odd byte counts inside wav": {"chunk_bytes": 333},
    "completion named done": {"completion_type": "done"},
    "completion named SYNTHESIS_COMPLETED": {"completion_type": "SYNTHESIS_COMPLETED"},
    "raw pcm without a stated rate": {"payload": "pcm", "stated_sample_rate": False},
    "wav whose data size lies short": {"wav_claimed_size": 100},
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
async def test_variant_is_played_exactly(
    variant: dict[str, Any], server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    for name, value in variant.items():
        setattr(server.behavior, name, value)
    tts = make_tts()
    for _ in range(2):  # twice: the second turn must not inherit anything from the first
        spoken = await speak(tts, " ".join(TEXT))
        assert spoken.digest == expected_digest(TEXT)


@pytest.mark.parametrize("output_format", ["wav", "pcm"])
@pytest.mark.parametrize("actual_rate", [22050, 24000, 8000])
async def test_the_audios_real_rate_wins(
    output_format: str, actual_rate: int, server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # the server ignores the 16 kHz asked for; the plugin resamples instead of playing the
    # audio too fast or too slow
    server.behavior.actual_sample_rate = actual_rate
    tts = make_tts(output_format=output_format)
    spoken = await speak(tts, TEXT[0])
    assert spoken.sample_rates == {16000}
    duration = len(spoken.pcm) / 2 / 16000
    assert duration == pytest.approx(SECONDS_PER_CHAR * len(TEXT[0]), abs=0.012)


@pytest.mark.parametrize("stated", [1, 10, 0x7FFFFFFF, -16000, 7999, 48001])
async def test_an_impossible_stated_rate_fails_its_request_only(
    stated: int, server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # 1 Hz would resample 320 kB into gigabytes; -16000 crashed the resampler
    server.behavior.rate_stated_for = {TEXT[0]: stated}
    tts = make_tts(output_format="pcm")
    bad, good = await asyncio.gather(
        speak(tts, TEXT[0]), speak(tts, TEXT[1]), return_exceptions=True
    )
    assert isinstance(bad, APIStatusError) and not bad.retryable
    assert f"{stated} Hz" in bad.message and "8000 to 48000" in bad.message
    assert isinstance(good, Spoken) and good.digest == expected_digest([TEXT[1]])
    # the socket served both and stays in use
    assert (await speak(tts, TEXT[1])).digest == expected_digest([TEXT[1]])
    assert server.received.connections == 1


def test_a_wav_header_rate_has_the_same_bounds() -> None:
    decoder = WavDecoder(sample_rate=16000)
    with pytest.raises(AudioFormatError, match="1000 Hz"):
        decoder.feed(wav_header(1000, 0xFFFFFFFF) + b"\x00" * 64)


@pytest.mark.parametrize("payload", ["wav_per_request", "wav_per_message"])
async def test_stereo_wav_is_mixed_down(
    payload: str, server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.channels = 2
    server.behavior.payload = payload  # type: ignore[assignment]
    server.behavior.chunk_bytes = 1002  # splits stereo frames across messages
    tts = make_tts()
    spoken = await speak(tts, " ".join(TEXT))
    assert spoken.digest == expected_digest(TEXT)


async def test_junk_messages_are_logged_and_skipped(
    server: FakeKnowlithicServer, make_tts: MakeTTS, caplog: pytest.LogCaptureFixture
) -> None:
    server.behavior.before_audio = [
        "this is not json",
        '{"type": "audio", "audio_data": "***not base64***"}',
        '{"type": "mystery", "payload": 1}',
        "[1, 2, 3]",
        '{"no_type": true}',
        '{"type": "audio", "audio_data": ""}',
        b"\x00\x05{bad",
    ]
    tts = make_tts()
    with caplog.at_level(logging.DEBUG, logger="tts_custom.knowlithic"):
        spoken = await speak(tts, " ".join(TEXT))
    assert spoken.digest == expected_digest(TEXT)
    assert "malformed" in caplog.text
    assert "mystery" in caplog.text
