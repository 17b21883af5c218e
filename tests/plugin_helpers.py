"""Drive the plugin the way the framework does, and collect what it yields."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from livekit.agents import APIConnectOptions
from livekit.agents import tts as lk_tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, USERDATA_TIMED_TRANSCRIPT, TimedString

from tests.fake_knowlithic import speech_for
from tts_custom.knowlithictts import TTS

BYTES_PER_SECOND = 2 * 16000
LONG_REPLY = (
    "The first sentence of a long reply is spoken here for a while. "
    "The second sentence follows it and goes on for a few seconds too. "
    "A third sentence keeps the listener busy with more words to hear. "
    "The fourth sentence is still part of the very same reply. "
    "Then a fifth sentence comes along before the end. "
    "And the sixth sentence closes the reply at last."
)
SHORT = "Yes, I can hear you again."
# what the worker uses (agent.tts_connect_options with the default KNOWLITHIC_TIMEOUT)
WORKER = APIConnectOptions(max_retry=3, retry_interval=0.5, timeout=5.0)


def loudness(pcm: bytes, frame: int = 320) -> npt.NDArray[np.float64]:
    """RMS of each 20 ms at 16 kHz: where the speech is, whatever coded it."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
    rms: npt.NDArray[np.float64] = np.sqrt((frames * frames).mean(axis=1))
    return rms


@dataclass
class Spoken:
    pcm: bytes = b""
    frames: int = 0
    request_ids: set[str] = field(default_factory=set)
    sample_rates: set[int] = field(default_factory=set)
    timed: list[TimedString] = field(default_factory=list)
    finals: int = 0

    def add(self, ev: lk_tts.SynthesizedAudio) -> None:
        data = ev.frame.data.tobytes()
        if ev.is_final and _is_end_marker(ev.frame.samples_per_channel, ev.frame.sample_rate, data):
            # the framework ends a segment whose audio came slower than real time with a
            # 10 ms silent frame of its own: not the server's audio
            self.finals += 1
            return
        self.pcm += data
        self.frames += 1
        self.request_ids.add(ev.request_id)
        self.sample_rates.add(ev.frame.sample_rate)
        self.timed.extend(ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, []))
        self.finals += ev.is_final

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.pcm).hexdigest()


def _is_end_marker(samples: int, sample_rate: int, data: bytes) -> bool:
    return samples == sample_rate // 100 and not any(data)


def expected_digest(sentences: Sequence[str], sample_rate: int = 16000) -> str:
    return hashlib.sha256(b"".join(speech_for(s, sample_rate) for s in sentences)).hexdigest()


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until ``check()`` holds; what it checks is another task's doing."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - it polls state a server task changes
            await asyncio.sleep(0.01)


async def speak(
    tts: TTS, *chunks: str, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
) -> Spoken:
    """Push ``chunks`` into one stream as an LLM would, then read every frame."""
    spoken = Spoken()
    async with tts.stream(conn_options=conn_options) as stream:
        for chunk in chunks:
            stream.push_text(chunk)
        stream.end_input()
        async for ev in stream:
            spoken.add(ev)
    return spoken


async def interrupt_after_first_audio(tts: TTS, text: str) -> None:
    """Start speaking ``text``, and stop the stream once its first audio arrived (barge-in)."""
    stream = tts.stream()
    stream.push_text(text)
    stream.end_input()
    await stream.__anext__()
    await stream.aclose()


async def synthesize(
    tts: TTS, text: str, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
) -> Spoken:
    spoken = Spoken()
    async with tts.synthesize(text, conn_options=conn_options) as stream:
        async for ev in stream:
            spoken.add(ev)
    return spoken
