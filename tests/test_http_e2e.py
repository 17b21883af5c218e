"""The HTTP transport against the real server's ``POST /v1/audio/speech``, killed and restarted.

``python -m tts_server`` runs as a process of its own (deterministic synthesis, so a resumed
reply can be compared with an undisturbed one), as in ``tests/test_server_restarts.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit.agents import APIStatusError

from tests.plugin_helpers import (
    BYTES_PER_SECOND,
    LONG_REPLY,
    SHORT,
    interrupt_after_first_audio,
    loudness,
    speak,
)
from tests.resumed_reply import assert_resumed, collect_errors, speak_through_fault
from tests.server_process import DETERMINISTIC, ServerProcess
from tts_custom.http_transport import HttpTransport
from tts_custom.knowlithictts import TTS

KEY = "sk-e2e-5b0d8c2a71f94e36"


@pytest.fixture
async def tts_server() -> AsyncIterator[ServerProcess]:
    # admission by headroom off, as in the restart tests: a cold server on a loaded machine
    # may rightly answer busy to sentences resumed all at once
    server = ServerProcess(
        *DETERMINISTIC, "--log-level", "INFO", "--first-audio-target", "0", "--api-key", KEY
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def tts(tts_server: ServerProcess) -> AsyncIterator[TTS]:
    plugin = TTS(base_url=tts_server.http_url, transport="http", api_key=KEY)
    yield plugin
    await plugin.aclose()


async def test_the_real_server_speaks_the_same_reply_over_http_as_over_its_websocket(
    tts_server: ServerProcess, tts: TTS
) -> None:
    websocket = TTS(base_url=tts_server.url, api_key=KEY)
    try:
        reference = await speak(websocket, LONG_REPLY)
    finally:
        await websocket.aclose()
    spoken = await speak(tts, LONG_REPLY)
    assert isinstance(tts._pool.current, HttpTransport)
    assert abs(len(spoken.pcm) - len(reference.pcm)) <= 0.05 * BYTES_PER_SECOND
    assert np.corrcoef(loudness(spoken.pcm), loudness(reference.pcm))[0, 1] > 0.95


async def test_a_restart_mid_reply_over_http_costs_a_pause_not_the_reply(
    tts_server: ServerProcess, tts: TTS
) -> None:
    reference = await speak(tts, LONG_REPLY)
    errors = collect_errors(tts)
    spoken, heard_before_kill, down = await speak_through_fault(tts, 0.5, tts_server.restart)
    assert 0.5 < down < 4.0  # a real restart: a new process loaded its voice
    assert not errors
    assert_resumed(spoken, reference, heard_before_kill, lossless=True)


async def test_an_interruption_over_http_leaves_nothing_for_the_next_turn(
    tts_server: ServerProcess, tts: TTS
) -> None:
    reference = await speak(tts, SHORT)
    await interrupt_after_first_audio(tts, LONG_REPLY)
    assert (await speak(tts, SHORT)).pcm == reference.pcm


async def test_the_real_server_refusing_a_key_or_a_voice_over_http_is_named(
    tts_server: ServerProcess,
) -> None:
    wrong_key = TTS(base_url=tts_server.http_url, transport="http", api_key="not-the-key")
    no_voice = TTS(base_url=tts_server.http_url, transport="http", api_key=KEY, voice="nobody")
    try:
        with pytest.raises(APIStatusError) as refused:
            await speak(wrong_key, SHORT)
        with pytest.raises(APIStatusError) as unknown:
            await speak(no_voice, SHORT)
    finally:
        await wrong_key.aclose()
        await no_voice.aclose()
    assert refused.value.status_code == 401 and not refused.value.retryable
    assert "nobody" in unknown.value.message and not unknown.value.retryable
    assert KEY not in tts_server.log and KEY not in str(refused.value)


async def test_compressed_formats_over_http_decode_to_the_same_reply(
    tts_server: ServerProcess, tts: TTS
) -> None:
    reference = await speak(tts, LONG_REPLY)
    opus = TTS(base_url=tts_server.http_url, transport="http", api_key=KEY, output_format="opus")
    mp3 = TTS(base_url=tts_server.http_url, transport="http", api_key=KEY, output_format="mp3")
    try:
        from_opus = await speak(opus, LONG_REPLY)
        from_mp3 = await speak(mp3, LONG_REPLY)
    finally:
        await opus.aclose()
        await mp3.aclose()
    assert abs(len(from_opus.pcm) - len(reference.pcm)) <= 0.02 * BYTES_PER_SECOND
    assert np.corrcoef(loudness(from_opus.pcm), loudness(reference.pcm))[0, 1] > 0.95
    # MP3 plays too, each sentence padded by the codec's delay (~50 ms at each end, which no
    # raw MP3 stream says): for the plugin, Opus is the compressed format to choose
    padding = len(from_mp3.pcm) - len(reference.pcm)
    assert 0 <= padding <= 6 * 0.15 * BYTES_PER_SECOND
