"""The call harness's room stand-ins: real-time input and output recorded on one timeline.

These run in real time, briefly; timing bounds are generous because the machine is shared,
while what lands on the timeline is checked sample for sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice.io import PlaybackFinishedEvent, PlaybackStartedEvent

from bench.call.audio_io import (
    CallerAudioInput,
    ListenerAudioOutput,
    Pcm,
    Timeline,
)
from tests.conftest import MakeTTS
from tests.fake_knowlithic import FakeKnowlithicServer, speech_for
from tests.plugin_helpers import eventually
from tests.scripted_llm import ScriptedLLM
from tts_custom.knowlithictts import TTS

RATE = 16000


def noise(seconds: float, rate: int = RATE, seed: int = 0) -> Pcm:
    """Speech stand-in with no zero samples, so silence on the timeline is unambiguous."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    magnitude = rng.integers(500, 8000, size=n)
    sign = rng.choice(np.array([-1, 1]), size=n)
    pcm: Pcm = (magnitude * sign).astype(np.int16)
    return pcm


def frames(pcm: Pcm, rate: int = RATE) -> list[rtc.AudioFrame]:
    step = rate // 50
    return [
        rtc.AudioFrame(pcm[i : i + step].tobytes(), rate, 1, len(pcm[i : i + step]))
        for i in range(0, len(pcm), step)
    ]


class Events:
    """The output's playback events with the monotonic time each arrived."""

    def __init__(self, out: ListenerAudioOutput) -> None:
        self.started: list[tuple[float, PlaybackStartedEvent]] = []
        self.finished: list[tuple[float, PlaybackFinishedEvent]] = []
        out.on("playback_started", lambda ev: self.started.append((time.monotonic(), ev)))
        out.on("playback_finished", lambda ev: self.finished.append((time.monotonic(), ev)))


def at(timeline: Timeline, seconds: float | None) -> int:
    assert seconds is not None
    return round(seconds * timeline.sample_rate)


# the caller's input


async def test_input_paces_frames_in_real_time() -> None:
    timeline = Timeline()
    timeline.start()
    caller = CallerAudioInput(timeline)
    lags: list[float] = []
    async for frame in caller:
        assert frame.sample_rate == RATE
        assert frame.samples_per_channel == 320
        assert not any(frame.data)  # silence while the caller is quiet
        lags.append(time.monotonic() - (timeline.t0 + len(lags) * 0.02))
        if len(lags) == 100:
            break
    # 2 s at 50 frames a second, each on its absolute deadline: the drift does not add up
    assert timeline.now() == pytest.approx(1.98, abs=0.05)
    assert min(lags) >= 0
    assert float(np.median(lags)) < 0.005
    assert lags[-1] < 0.02
    assert len(timeline.caller) == 100 * 320


async def test_input_catches_up_without_skipping() -> None:
    timeline = Timeline()
    timeline.start()
    caller = CallerAudioInput(timeline)
    # a clip not yet started can be taken back
    other = asyncio.create_task(caller.say(noise(0.1, seed=9).tobytes(), RATE))
    taken_back = asyncio.create_task(caller.say(noise(0.1).tobytes(), RATE))
    await asyncio.sleep(0)
    taken_back.cancel()
    await asyncio.sleep(0)
    other.cancel()
    await asyncio.gather(other, taken_back, return_exceptions=True)
    assert not caller.speaking

    await caller.__anext__()
    await asyncio.sleep(0.2)  # the consumer falls ten frames behind
    started = time.monotonic()
    for _ in range(10):
        await caller.__anext__()
    assert time.monotonic() - started < 0.05  # the late frames come at once
    assert caller.frames == 11
    assert len(timeline.caller) == 11 * 320  # one frame per 20 ms, none skipped
    await caller.aclose()
    with pytest.raises(StopAsyncIteration):
        await caller.__anext__()


async def test_input_feeds_clips_at_their_offsets() -> None:
    timeline = Timeline()
    timeline.start()
    caller = CallerAudioInput(timeline)
    fed: list[bytes] = []

    async def consume() -> None:
        async for frame in caller:
            fed.append(bytes(frame.data))

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    clip = noise(0.27, seed=1)  # not a whole number of frames
    said_at = timeline.now()
    await caller.say(clip.tobytes(), RATE)
    # it returns once the frame holding its last sample is fed
    first = caller.clips[0]
    assert len(fed) * 320 >= first.offset + len(clip)
    assert not caller.speaking
    assert first.offset % 320 == 0  # it starts on a frame
    assert said_at <= first.start <= said_at + 0.06
    assert first.samples == len(clip)
    assert first.end == pytest.approx(first.start + 0.27)

    # a clip at another rate is resampled, and queued clips follow one another
    await asyncio.gather(
        caller.say(noise(0.1, 48000, seed=2).tobytes(), 48000),
        caller.say(noise(0.1, 8000, seed=3).tobytes(), 8000),
    )
    await asyncio.sleep(0.05)
    await caller.aclose()
    await asyncio.wait_for(consumer, 1)  # closing ends the iteration

    # the timeline holds exactly what was fed, where it was fed
    recorded = timeline.caller
    assert recorded.tobytes() == b"".join(fed)
    assert recorded[first.offset : first.offset + len(clip)].tobytes() == clip.tobytes()
    assert not recorded[: first.offset].any()
    second, third = caller.clips[1:]
    assert second.samples == 1600
    assert third.samples == 1600
    assert second.offset == first.offset + 320 * 14  # the frame after the first one ended
    assert third.offset == second.offset + 1600
    assert not recorded[first.offset + len(clip) : second.offset].any()
    assert not recorded[third.offset + 1600 :].any()


# the caller's speaker


async def test_output_plays_a_segment_in_real_time() -> None:
    timeline = Timeline()
    timeline.start()
    out = ListenerAudioOutput(timeline)
    events = Events(out)
    pcm = noise(0.5)
    await asyncio.sleep(0.05)
    captured_at, captured_wall = timeline.now(), time.time()
    for frame in frames(pcm):
        await out.capture_frame(frame)
    out.flush()
    assert not events.finished  # captured at once, but not played yet
    assert out.playing

    ev = await out.wait_for_playout()
    assert not ev.interrupted
    assert ev.playback_position == pytest.approx(0.5)
    [(finished_at, _)] = events.finished
    [(_, started)] = events.started
    assert finished_at - timeline.t0 >= captured_at + 0.5  # only once the audio has played
    assert finished_at - timeline.t0 < captured_at + 0.6
    assert started.created_at == pytest.approx(captured_wall, abs=0.02)  # wall clock

    [segment] = out.segments
    assert segment.start == pytest.approx(captured_at, abs=0.02)
    assert at(timeline, segment.end) == at(timeline, segment.start) + len(pcm)
    assert segment.heard == pytest.approx(0.5)
    assert not segment.interrupted
    start = at(timeline, segment.start)
    assert timeline.agent[start:].tobytes() == pcm.tobytes()
    assert not timeline.agent[:start].any()


async def test_clear_buffer_stops_at_once() -> None:
    timeline = Timeline()
    timeline.start()
    out = ListenerAudioOutput(timeline)
    events = Events(out)
    pcm = noise(1.0)
    for frame in frames(pcm):
        await out.capture_frame(frame)
    out.flush()
    await asyncio.sleep(0.3)
    out.clear_buffer()
    [(_, ev)] = events.finished  # at once, not when the audio would have ended
    assert ev.interrupted
    assert 0.25 < ev.playback_position < 0.6

    [segment] = out.segments
    assert segment.interrupted
    assert segment.heard == ev.playback_position
    assert segment.duration == pytest.approx(1.0)
    start = at(timeline, segment.start)
    heard = round(segment.heard * RATE)
    assert at(timeline, segment.end) == start + heard
    # the timeline stops where it was cut: nothing of the rest is ever recorded
    assert timeline.agent[start:].tobytes() == pcm[:heard].tobytes()
    await asyncio.sleep(0.1)
    assert len(timeline.agent) == start + heard


async def test_clear_buffer_before_flush_drops_the_rest_of_the_segment() -> None:
    timeline = Timeline()
    timeline.start()
    out = ListenerAudioOutput(timeline)
    events = Events(out)
    pcm = noise(0.6)
    chunks = frames(pcm)
    for frame in chunks[:15]:
        await out.capture_frame(frame)
    await asyncio.sleep(0.1)
    out.clear_buffer()
    for frame in chunks[15:]:  # the same segment keeps coming until it is flushed
        await out.capture_frame(frame)
    out.flush()
    assert [ev.interrupted for _, ev in events.finished] == [True]
    [segment] = out.segments
    heard = round(segment.heard * RATE)
    assert 0.05 < segment.heard < 0.3
    assert len(timeline.agent) == at(timeline, segment.start) + heard

    # the next segment is counted and played as usual
    for frame in frames(noise(0.1, seed=5)):
        await out.capture_frame(frame)
    out.flush()
    ev = await asyncio.wait_for(out.wait_for_playout(), 1)
    assert not ev.interrupted
    assert ev.playback_position == pytest.approx(0.1)


async def test_back_to_back_segments_play_gapless_in_order() -> None:
    timeline = Timeline()
    timeline.start()
    out = ListenerAudioOutput(timeline)
    events = Events(out)
    first, second = noise(0.3, seed=1), noise(0.2, seed=2)
    for pcm in (first, second):
        for frame in frames(pcm):
            await out.capture_frame(frame)
        out.flush()
    began = time.monotonic()
    await out.wait_for_playout()
    await eventually(lambda: len(events.finished) == 2, timeout=1)
    assert time.monotonic() - began >= 0.45

    a, b = out.segments
    assert b.start == a.end  # the second starts on the first's last sample, not at capture
    assert a.start is not None
    assert b.end == pytest.approx(a.start + 0.5)
    # ended, started, ended: each reported when it really happened
    assert len(events.started) == 2
    assert events.started[1][0] >= events.finished[0][0]
    assert events.finished[1][0] - events.finished[0][0] >= 0.195
    start = at(timeline, a.start)
    assert timeline.agent[start:].tobytes() == first.tobytes() + second.tobytes()


async def test_output_resamples_to_16k() -> None:
    timeline = Timeline()
    timeline.start()
    out = ListenerAudioOutput(timeline)
    t = np.arange(12000) / 24000
    sine = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    for frame in frames(sine, 24000):
        await out.capture_frame(frame)
    out.flush()
    ev = await out.wait_for_playout()
    assert ev.playback_position == pytest.approx(0.5)  # in the TTS's own seconds

    [segment] = out.segments
    start = at(timeline, segment.start)
    played = timeline.agent[start:].astype(float)
    assert len(played) == 8000
    expected = 8000 * np.sin(2 * np.pi * 440 * np.arange(8000) / RATE)
    assert np.abs(played[100:-100] - expected[100:-100]).max() < 80


async def test_pause_holds_the_playhead_and_resumes_where_it_stopped() -> None:
    timeline = Timeline()
    timeline.start()
    out = ListenerAudioOutput(timeline)
    assert out.can_pause
    events = Events(out)
    pcm = noise(0.4)
    for frame in frames(pcm):
        await out.capture_frame(frame)
    out.flush()
    await asyncio.sleep(0.15)
    out.pause()
    out.pause()  # idempotent, as resume() is
    await asyncio.sleep(0.2)
    assert not events.finished  # a paused segment does not end
    out.resume()
    out.resume()
    began = time.monotonic()
    ev = await out.wait_for_playout()
    assert not ev.interrupted
    assert ev.playback_position == pytest.approx(0.4)
    assert time.monotonic() - began >= 0.2  # the rest still had to play
    assert len(events.started) == 1

    [segment] = out.segments
    start, end = at(timeline, segment.start), at(timeline, segment.end)
    played = timeline.agent[start:end]
    assert len(played) - len(pcm) == pytest.approx(0.2 * RATE, abs=0.1 * RATE)  # the pause
    assert played[played != 0].tobytes() == pcm.tobytes()  # every sample once, in order
    silent = np.flatnonzero(played == 0)
    assert len(silent) == silent[-1] - silent[0] + 1  # in one stretch


def test_wav_has_two_channels_of_equal_length(tmp_path: Path) -> None:
    timeline = Timeline()
    timeline.start()
    caller, agent = noise(0.1, seed=1), noise(0.3, seed=2)
    timeline.write_caller(0, caller)
    timeline.write_agent(800, agent)
    samples = timeline.samples()
    assert samples.shape == (800 + len(agent), 2)
    assert samples[: len(caller), 0].tobytes() == caller.tobytes()
    assert not samples[len(caller) :, 0].any()
    assert samples[800:, 1].tobytes() == agent.tobytes()

    path = tmp_path / "call.wav"
    timeline.write_wav(path)
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 2
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == RATE
        assert wav.getnframes() == len(samples)
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(data, samples)


# a real session


INSTRUCTIONS = "You are Avery, a warm nurse assistant."
REPLY = "I'm sorry to hear that. When did it start?"
LONG_REPLY = (
    "I'm sorry to hear about your headache, that sounds really unpleasant. "
    "When did it start, and has it been getting worse over the last few days? "
    "Have you taken anything for it yet, like ibuprofen or paracetamol?"
)


@contextlib.asynccontextmanager
async def listening(
    tts: TTS, out: ListenerAudioOutput, reply: str
) -> AsyncIterator[AgentSession[None]]:
    """A started session, no room, that answers ``reply`` and plays it through ``out``."""
    scripted = ScriptedLLM([reply])
    async with (
        scripted,
        AgentSession[None](
            llm=scripted, tts=tts, vad=None, turn_handling={"turn_detection": None}
        ) as session,
    ):
        session.output.audio = out
        await session.start(Agent(instructions=INSTRUCTIONS))
        yield session


def spoken(server: FakeKnowlithicServer) -> bytes:
    return b"".join(speech_for(r.text, RATE) for r in server.received.requests)


async def test_a_session_reply_lands_on_the_timeline_where_it_played(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    timeline = Timeline()
    timeline.start()
    out = ListenerAudioOutput(timeline)
    async with listening(make_tts(), out, REPLY) as session:
        handle = session.generate_reply(user_input="I have a headache.")
        await asyncio.wait_for(handle.wait_for_playout(), 15)
        done_at = timeline.now()

    [segment] = out.segments
    assert not segment.interrupted
    expected = spoken(server)
    assert segment.heard == pytest.approx(len(expected) / 2 / RATE)
    assert segment.start is not None
    assert done_at >= segment.start + segment.heard  # the reply ended once it was heard
    start = at(timeline, segment.start)
    assert timeline.agent[start:].tobytes() == expected
    assert not timeline.agent[:start].any()


async def test_an_interrupted_reply_is_cut_on_the_timeline(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    timeline = Timeline()
    timeline.start()
    out = ListenerAudioOutput(timeline)
    async with listening(make_tts(), out, LONG_REPLY) as session:
        handle = session.generate_reply(user_input="I have a headache.")
        await eventually(lambda: out.playing, timeout=10)
        await asyncio.sleep(0.5)
        await asyncio.wait_for(session.interrupt(), 5)
        await asyncio.wait_for(handle.wait_for_playout(), 5)
        history = [m for m in session.history.items if isinstance(m, llm.ChatMessage)]

    [segment] = out.segments
    assert segment.interrupted
    assert 0.4 < segment.heard < 1.5
    assert segment.heard < segment.duration
    start, heard = at(timeline, segment.start), round(segment.heard * RATE)
    assert timeline.agent[start:].tobytes() == spoken(server)[: heard * 2]
    assert len(timeline.agent) == start + heard  # nothing after the cut
    reply = history[-1]
    assert reply.role == "assistant"
    assert reply.interrupted
