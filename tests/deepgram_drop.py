"""A caller talking to the Deepgram plugin while its socket fails: shared by the tests and
bench/stt_drop.py.

The caller's speech is Piper's (no noise: the same audio every run), fed to a real
``deepgram.STT`` stream at real-time pace in 20 ms frames; the server is
:class:`tests.fake_deepgram.FakeDeepgramProcess`, a process of its own.  The fault hits in
the middle of phrase B; phrase C, the first speech that starts after it, follows B at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import aiohttp
import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.plugins import deepgram

from tests.fake_deepgram import FakeDeepgramProcess
from worker.stt_recovery import AudioGate
from worker.stt_watchdog import WatchedSpeechStream, WatchedSTT

RATE: Final = 16000
FRAME: Final = RATE // 50  # 20 ms, as LiveKit delivers a caller's audio
Pcm = npt.NDArray[np.int16]
Fault = Literal["drop", "kill", "stall", "stall_all", "none"]

# Three sentences with no word in common, so a transcript says which one it heard.
A: Final = "Please call me back when you get home tonight after dinner."
B: Final = "My daughter has had a fever and a sore throat since yesterday."
C: Final = "I would like to book an appointment with the doctor for next week."
PHRASES: Final = (A, B, C)
GAP_S: Final = 0.6  # silence between phrases: an end of phrase for the recognizer
FAULT_INTO_B: Final = 0.5  # the fault hits halfway through B
DOWN_S: Final = 1.5  # a killed server starts again this long after it died


def render(texts: Iterable[str]) -> dict[str, Pcm]:
    """Piper's rendering of each sentence at 16 kHz, mono s16le."""
    from tts_server.audio import StreamResampler  # loads Piper
    from tts_server.config import ServerConfig
    from tts_server.engines import load_engine

    config = ServerConfig(hosts=("127.0.0.1",), port=0, workers=1, noise_scale=0.0, noise_w=0.0)
    engine = load_engine(config)
    try:
        voice = next(iter(engine.voices.values()))
        out: dict[str, Pcm] = {}
        for text in texts:
            segment = voice.render(
                text,
                resampler=StreamResampler(voice.sample_rate, RATE),
                pause_after=0.0,
                inner_pause=0.3,
                last=True,
                with_words=False,
            )
            out[text] = np.frombuffer(segment.pcm, dtype=np.int16)
        return out
    finally:
        engine.close()


@dataclass
class Script:
    """The caller's audio: where each phrase starts (in samples) and where the fault hits."""

    pcm: Pcm
    starts: dict[str, int]
    fault_at: int


def script(speech: Mapping[str, Pcm], tail: float = 2.0) -> Script:
    """A, B, C with ``GAP_S`` between them, then ``tail`` seconds of silence."""
    gap = np.zeros(int(GAP_S * RATE), dtype=np.int16)
    parts: list[Pcm] = [gap]
    starts: dict[str, int] = {}
    position = len(gap)
    for text in PHRASES:
        starts[text] = position
        parts += [speech[text], gap]
        position += len(speech[text]) + len(gap)
    parts.append(np.zeros(int(tail * RATE), dtype=np.int16))  # time for the last final
    fault_at = starts[B] + int(FAULT_INTO_B * len(speech[B]))
    return Script(pcm=np.concatenate(parts), starts=starts, fault_at=fault_at)


def distinct_words(text: str) -> set[str]:
    """The longer words of ``text`` no other phrase has: a recognizer's guesses at another
    phrase's sounds are mostly short words ("the", "for", "to"), so those say nothing."""
    words = {w.strip(".,").lower() for w in text.split() if len(w.strip(".,")) > 3}
    others = {w.strip(".,").lower() for p in PHRASES if p != text for w in p.split()}
    return words - others


def hears(text: str, phrase: str, least: int = 2) -> bool:
    """Whether a transcript has at least ``least`` words only ``phrase`` has."""
    return len({w.lower() for w in text.split()} & distinct_words(phrase)) >= least


@dataclass
class Heard:
    at: float  # time.time()
    type: stt.SpeechEventType
    text: str


@dataclass
class Run:
    """What happened, on one clock (``time.time()``)."""

    fault: Fault
    t0: float  # when sample 0 was pushed
    pushed: int  # samples pushed in all
    fault_time: float
    listening_again: float  # the server accepted connections again (drop: it never stopped)
    events: list[Heard] = field(default_factory=list)
    connections: list[dict[str, object]] = field(default_factory=list)  # the server's, after
    error: BaseException | None = None  # the stream's, if it gave up
    error_at: float = 0.0
    dropped: float = 0.0  # seconds the AudioGate dropped, if one was used
    replayed: float = 0.0  # seconds the watchdog's stream sent again to a new socket
    hangs: list[float] = field(default_factory=list)  # the watchdog's wait, per hung socket

    def time_of(self, sample: int) -> float:
        return self.t0 + sample / RATE

    def first_heard(self, phrase: str, *, final: bool = False) -> Heard | None:
        kinds = {stt.SpeechEventType.FINAL_TRANSCRIPT}
        if not final:
            kinds.add(stt.SpeechEventType.INTERIM_TRANSCRIPT)
        return next((e for e in self.events if e.type in kinds and hears(e.text, phrase)), None)

    def finals(self) -> list[str]:
        return [e.text for e in self.events if e.type == stt.SpeechEventType.FINAL_TRANSCRIPT]

    def repeated_words(self) -> list[str]:
        """The phrases' distinctive words that more than one final transcribed."""
        said = [w.lower() for f in self.finals() for w in f.split()]
        words = set().union(*(distinct_words(p) for p in PHRASES))
        return sorted(w for w in words if said.count(w) > 1)


async def microphone(pcm: Pcm, t0: float) -> AsyncIterator[rtc.AudioFrame]:
    """``pcm`` in 20 ms frames, frame n at ``t0 + n * 0.02`` (absolute deadlines)."""
    for n, offset in enumerate(range(0, len(pcm), FRAME)):
        delay = t0 + n * FRAME / RATE - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = pcm[offset : offset + FRAME]
        yield rtc.AudioFrame(chunk.tobytes(), RATE, 1, len(chunk))


async def feed(stream: stt.RecognizeStream, frames: AsyncIterable[rtc.AudioFrame]) -> None:
    async for frame in frames:
        stream.push_frame(frame)
    stream.end_input()


async def inject(server: FakeDeepgramProcess, fault: Fault) -> float:
    """The fault; returns when the server listened again (time.time())."""
    if fault == "none":
        return time.time()
    if fault == "drop":
        await server.control("drop")
        return time.time()
    if fault == "stall":  # the socket hangs; new ones are served
        await server.control("stall")
        return time.time()
    if fault == "stall_all":  # the socket hangs, and every new one after its handshake
        await server.control("stall?new=1")
        return time.time()
    await server.kill()
    await asyncio.sleep(DOWN_S)
    await server.start()
    return time.time()


async def run(
    server: FakeDeepgramProcess,
    speech: Mapping[str, Pcm],
    fault: Fault,
    conn_options: APIConnectOptions,
    max_backlog: float | None = None,
    tail: float = 2.0,
    *,
    watchdog: bool = True,
) -> Run:
    """Speak A, B (the fault halfway) and C to one stream; every event is recorded.

    With ``max_backlog``, through the worker's :class:`stt_recovery.AudioGate`; with
    ``watchdog``, the worker's :class:`stt_watchdog.WatchedSTT`, else the plugin's own."""
    plan = script(speech, tail)
    async with aiohttp.ClientSession() as http:
        dg = (WatchedSTT if watchdog else deepgram.STT)(
            api_key=server.api_key, base_url=server.listen_url, http_session=http, language="en-US"
        )
        stream = dg.stream(conn_options=conn_options)
        t0 = time.time() + 0.1
        result = Run(fault, t0, len(plan.pcm), fault_time=0.0, listening_again=0.0)
        frames = microphone(plan.pcm, t0)
        gate = AudioGate(dg, max_backlog=max_backlog) if max_backlog is not None else None
        feeder = asyncio.create_task(feed(stream, gate.hold(frames) if gate else frames))

        async def fail() -> None:
            await asyncio.sleep(max(result.time_of(plan.fault_at) - time.time(), 0))
            result.fault_time = time.time()
            result.listening_again = await inject(server, fault)

        injector = asyncio.create_task(fail())
        try:
            async for ev in stream:
                text = ev.alternatives[0].text if ev.alternatives else ""
                result.events.append(Heard(time.time(), ev.type, text))
        except Exception as e:  # the stream gave up: what the session would see
            result.error = e
            result.error_at = time.time()
        finally:
            await injector
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await feeder
            await stream.aclose()
            await dg.aclose()
            if isinstance(stream, WatchedSpeechStream):
                result.replayed, result.hangs = stream.replayed, list(stream.hangs)
            if gate is not None:
                gate.close()
                result.dropped = gate.dropped
    result.connections = (await server.control("stats"))["connections"]
    return result


def resumed_from(result: Run) -> int:
    """The sample the last socket's audio started at (it got everything to the end)."""
    last = result.connections[-1]
    received = int(str(last["audio_bytes"])) // 2
    return result.pushed - received
