"""Real OpenAI clients against the real server's /v1/audio/speech: the official ``openai``
package and LiveKit's own ``livekit.plugins.openai.TTS``, each with what it sends by default.
The audio must be the words asked for (pocketsphinx), not merely bytes."""

from __future__ import annotations

import io
from typing import Any, Literal

import av
import numpy as np
import openai
import pytest
import soxr
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.agents import tts as lk_tts
from livekit.agents.types import NOT_GIVEN
from livekit.plugins import openai as lk_openai

from tests.plugin_helpers import Spoken

from .asr import ASR_SAMPLE_RATE, transcribe, word_error_rate
from .helpers import RunningServer, StartServer
from .test_audio_quality import SENTENCES, WER_THRESHOLD

KEY = "k3y"
SENTENCE = SENTENCES[0]
NO_RETRY = APIConnectOptions(max_retry=0, timeout=20)


Format = Literal["pcm", "wav", "mp3", "opus"]


async def synthesize(tts: lk_tts.TTS[Any], text: str) -> Spoken:
    spoken = Spoken()
    async with tts.synthesize(text, conn_options=NO_RETRY) as stream:
        async for ev in stream:
            spoken.add(ev)
    return spoken


def heard(pcm: bytes, rate: int) -> str:
    samples = np.frombuffer(pcm, dtype="<i2")
    resampled = soxr.resample(samples, rate, ASR_SAMPLE_RATE).astype("<i2")
    return transcribe(resampled.tobytes())


def decoded(data: bytes) -> tuple[bytes, int]:
    """A whole file (MP3, Ogg Opus) as mono s16le and its rate, as a player reads it."""
    out = bytearray()
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for frame in container.decode(stream):
            for piece in resampler.resample(frame):
                out += piece.to_ndarray().tobytes()
    return bytes(out), rate


@pytest.fixture
async def keyed(start_server: StartServer) -> RunningServer:
    return await start_server(api_key=KEY)


def client(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url("/v1"), api_key=KEY, max_retries=0)


@pytest.mark.parametrize("response_format", ["pcm", "wav", "mp3", "opus"])
async def test_the_official_client_streams_each_format(
    keyed: RunningServer, response_format: Format
) -> None:
    async with (
        client(keyed) as oai,
        oai.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format=response_format
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["x-sample-rate"] == "24000"
        rate = 24000
        chunks = [chunk async for chunk in response.iter_bytes()]
    data = b"".join(chunks)
    if response_format == "pcm":
        pcm = data
    elif response_format == "wav":
        pcm = data[44:]
    else:
        pcm, rate = decoded(data)  # a player decodes Opus at 48 kHz
    assert 1.5 < len(pcm) / 2 / rate < 5.0
    assert word_error_rate([SENTENCE], [heard(pcm, rate)]) <= WER_THRESHOLD


async def test_the_official_client_reads_the_errors(keyed: RunningServer) -> None:
    async with client(keyed) as oai:
        with pytest.raises(openai.BadRequestError) as bad:
            await oai.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")
        assert bad.value.code == "unknown_voice"
        assert bad.value.param == "voice"
        wrong = openai.AsyncOpenAI(base_url=keyed.url("/v1"), api_key="wrong", max_retries=0)
        async with wrong:
            with pytest.raises(openai.AuthenticationError):
                await wrong.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
        models = await oai.models.list()
        assert "tts-1" in {m.id for m in models.data}


@pytest.mark.parametrize(
    ("model", "response_format"),
    [
        # LiveKit's defaults: gpt-4o-mini-tts asks for stream_format "sse", and mp3
        ("gpt-4o-mini-tts", None),
        ("tts-1", None),  # stream_format "audio"
        ("tts-1", "pcm"),
    ],
)
async def test_livekit_s_openai_plugin_speaks_through_the_server(
    keyed: RunningServer, model: str, response_format: Literal["pcm"] | None
) -> None:
    tts = lk_openai.TTS(
        base_url=keyed.url("/v1"),
        api_key=KEY,
        model=model,
        voice="alloy",
        response_format=NOT_GIVEN if response_format is None else response_format,
    )
    try:
        spoken = await synthesize(tts, SENTENCE)
    finally:
        await tts.aclose()
    assert spoken.sample_rates == {24000}
    seconds = len(spoken.pcm) / 2 / 24000
    assert 1.5 < seconds < 5.0  # the sentence, spoken once
    assert word_error_rate([SENTENCE], [heard(spoken.pcm, 24000)]) <= WER_THRESHOLD


async def test_livekit_s_openai_plugin_reports_a_refusal(keyed: RunningServer) -> None:
    tts = lk_openai.TTS(base_url=keyed.url("/v1"), api_key=KEY, voice="nobody")
    try:
        with pytest.raises(APIStatusError) as refused:
            await synthesize(tts, SENTENCE)
    finally:
        await tts.aclose()
    assert refused.value.status_code == 400
