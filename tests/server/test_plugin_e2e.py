"""The plugin against the real server, speaking with real Piper: the whole chain on one machine.

Every reply here is real speech, checked by ear with pocketsphinx where the words matter.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.agents.metrics import TTSMetrics

from tests.plugin_helpers import Spoken, eventually, interrupt_after_first_audio, speak, synthesize
from tts_custom.knowlithictts import TTS
from tts_custom.ws_transport import WebSocketTransport

from .asr import ASR_SAMPLE_RATE, transcribe, word_error_rate
from .helpers import RunningServer, StartServer
from .test_audio_quality import SENTENCES, WER_THRESHOLD

NO_RETRY = APIConnectOptions(max_retry=0, timeout=10.0)
# One sentence through pocketsphinx is a noisy measure (0-0.4 on good speech; garbage scores
# 0.9 or worse): enough to tell speech of the right words from anything else.
ONE_SENTENCE_WER = 0.5
REPLY = "Good morning, this is Avery. How can I help you today? I am here to listen."

MakePlugin = Callable[..., TTS]


@pytest.fixture
async def make_plugin(server: RunningServer) -> AsyncIterator[MakePlugin]:
    made: list[TTS] = []

    def make(**kwargs: Any) -> TTS:
        kwargs.setdefault("base_url", server.ws_url)
        plugin = TTS(**kwargs)
        made.append(plugin)
        return plugin

    yield make
    for plugin in made:
        await plugin.aclose()


def seconds(spoken: Spoken, rate: int = ASR_SAMPLE_RATE) -> float:
    return len(spoken.pcm) / 2 / rate


async def test_streaming_speech_is_intelligible(make_plugin: MakePlugin) -> None:
    plugin = make_plugin()  # the default voice "elise" is the local server's alias of joe
    heard = []
    for sentence in SENTENCES:
        spoken = await speak(plugin, *re.findall(r"\S+\s*", sentence))  # as an LLM writes
        heard.append(transcribe(spoken.pcm))
    assert word_error_rate(SENTENCES, heard) < WER_THRESHOLD


@pytest.mark.parametrize("output_format", ["wav", "pcm", "opus", "mp3"])
async def test_chunked_synthesis_of_a_multi_sentence_reply(
    output_format: str, make_plugin: MakePlugin
) -> None:
    plugin = make_plugin(output_format=output_format)
    reply = " ".join(SENTENCES[:4])
    spoken = await synthesize(plugin, reply)
    assert spoken.sample_rates == {16000}
    assert 8.0 < seconds(spoken) < 16.0
    assert word_error_rate([reply], [transcribe(spoken.pcm)]) < WER_THRESHOLD


@pytest.mark.parametrize("output_format", ["wav", "opus"])
async def test_word_timestamps_align_the_transcript(
    output_format: str, make_plugin: MakePlugin
) -> None:
    plugin = make_plugin(output_format=output_format)
    spoken = await speak(plugin, REPLY)
    assert "".join(spoken.timed) == REPLY
    ends = [t.end_time for t in spoken.timed if isinstance(t.end_time, float)]
    assert len(ends) == len(spoken.timed) and ends == sorted(ends)
    assert ends[-1] <= seconds(spoken) + 0.05


@pytest.mark.parametrize("output_format", ["wav", "opus"])
async def test_one_socket_and_metrics_across_turns(
    output_format: str, server: RunningServer, make_plugin: MakePlugin
) -> None:
    plugin = make_plugin(output_format=output_format)
    metrics: list[TTSMetrics] = []
    plugin.on("metrics_collected", metrics.append)
    plugin.prewarm()
    await eventually(lambda: plugin._pool.current is not None, timeout=5)
    for _ in range(3):
        await speak(plugin, "Thank you. Goodbye.")
    await eventually(lambda: len(metrics) == 3)
    assert all(m.connection_reused for m in metrics)
    assert all(0 < m.ttfb < 2.0 for m in metrics)
    assert server.state.metrics is not None


async def test_concurrent_streams_each_hear_their_own_words(make_plugin: MakePlugin) -> None:
    plugin = make_plugin()
    texts = SENTENCES[:4]
    results = await asyncio.gather(*(speak(plugin, text) for text in texts))
    heard = [transcribe(r.pcm) for r in results]
    assert word_error_rate(texts, heard) < WER_THRESHOLD
    assert len({r.request_ids.pop() for r in results}) == len(texts)


@pytest.mark.parametrize("output_format", ["wav", "opus"])
async def test_interruption_cancels_on_the_server_and_the_next_turn_is_clean(
    output_format: str, server: RunningServer, make_plugin: MakePlugin
) -> None:
    plugin = make_plugin(output_format=output_format)
    long_reply = " ".join(SENTENCES)
    await interrupt_after_first_audio(plugin, long_reply)
    # the server frees the cancelled requests at once
    await eventually(lambda: server.state.capacity.in_use == 0, timeout=5)
    spoken = await speak(plugin, SENTENCES[0])
    assert word_error_rate([SENTENCES[0]], [transcribe(spoken.pcm)]) < ONE_SENTENCE_WER
    assert seconds(spoken) < 4.0  # nothing of the long reply leaked in


async def test_other_rates_and_voices(make_plugin: MakePlugin) -> None:
    plugin = make_plugin(voice="joe", sample_rate=24000)
    spoken = await speak(plugin, SENTENCES[1])
    assert spoken.sample_rates == {24000}
    # pocketsphinx listens at 16 kHz: bring the 24 kHz speech down for it
    pcm24 = np.frombuffer(spoken.pcm, dtype="<i2").astype(np.float32)
    pcm16 = np.interp(np.arange(0, len(pcm24), 1.5), np.arange(len(pcm24)), pcm24)
    heard = transcribe(pcm16.astype("<i2").tobytes())
    assert word_error_rate([SENTENCES[1]], [heard]) < ONE_SENTENCE_WER


async def test_an_unknown_voice_is_refused_clearly(make_plugin: MakePlugin) -> None:
    plugin = make_plugin(voice="amy")
    with pytest.raises(APIStatusError) as info:
        await speak(plugin, "Hello.", conn_options=NO_RETRY)
    assert not info.value.retryable
    assert "'amy'" in str(info.value) and "elise" in str(info.value)


async def test_auth_with_a_key(start_server: StartServer, make_plugin: MakePlugin) -> None:
    guarded = await start_server(api_key="local-secret-1234")
    good = make_plugin(base_url=guarded.ws_url, api_key="local-secret-1234")
    assert seconds(await speak(good, "Hello.")) > 0.2

    bad = make_plugin(base_url=guarded.ws_url, api_key="wrong")
    with pytest.raises(APIStatusError) as info:
        await speak(bad, "Hello.", conn_options=NO_RETRY)
    assert info.value.status_code == 401 and "refused the API key" in str(info.value)


async def test_server_limits_reach_the_plugin_as_clear_errors(
    start_server: StartServer, make_plugin: MakePlugin
) -> None:
    tight = await start_server(max_text_length=30, max_requests=1)
    plugin = make_plugin(base_url=tight.ws_url)
    # a sentence over the server's text limit is split to fit, not refused
    long_sentence = "This sentence is a good deal longer than thirty characters."
    spoken = await speak(plugin, long_sentence)
    assert word_error_rate([long_sentence], [transcribe(spoken.pcm)]) < ONE_SENTENCE_WER

    # a full server says busy: retryable, so the framework tries again
    others = [speak(plugin, sentence) for sentence in SENTENCES[:3]]
    results = await asyncio.gather(*others, return_exceptions=True)
    busy = [r for r in results if isinstance(r, APIStatusError)]
    assert all(e.retryable and "busy" in str(e) for e in busy)
    assert any(isinstance(r, Spoken) for r in results)


async def test_malformed_messages_do_not_disturb_the_plugins_socket(
    server: RunningServer, make_plugin: MakePlugin, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = make_plugin()
    await speak(plugin, "First.")
    conn = plugin._pool.current
    assert isinstance(conn, WebSocketTransport)
    await conn._ws.send_str("{not json")  # garbage on the plugin's own socket
    with caplog.at_level(logging.WARNING, logger="tts_custom.knowlithic"):
        spoken = await speak(plugin, SENTENCES[2])
    assert word_error_rate([SENTENCES[2]], [transcribe(spoken.pcm)]) < ONE_SENTENCE_WER
    assert plugin._pool.current is conn
    # the server's error for the garbage names no request: logged, not mistaken for audio
    assert "bad_request" in caplog.text
