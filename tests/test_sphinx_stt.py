"""The offline STT stand-in (bench/call/sphinx_stt.py) on real speech from the project's Piper.

No mocks: Piper renders the sentences in-process, a real pocketsphinx worker decodes them.
Audio goes in as 20 ms frames, at real-time pace where timing matters.  Run with ``-s`` to
see the measured figures (final delay, WER, CPU per second of audio).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import psutil
import pytest
from livekit import rtc
from livekit.agents import stt

from bench.call.caller_voice import BACKCHANNEL_TEXT
from bench.call.sphinx_stt import SAMPLE_RATE, Pcm, SpeechStream, SphinxSTT
from tests.server.asr import word_error_rate
from tts_server.audio import StreamResampler
from tts_server.config import ServerConfig
from tts_server.engines import load_engine

Kind = stt.SpeechEventType
ENDPOINT = 0.25  # SphinxSTT's default
MAX_WER = 0.2
# Sentences of 11-13 words: one recognition error is then well within MAX_WER per phrase.
PHRASES = [  # spoken one after another in real time
    "Please call me back when you get home tonight after dinner.",
    "I would like to book an appointment with the doctor for next week.",
    "Can you tell me when the doctor is available on Monday morning?",
]
MORE = [  # for the word error rate
    "The weather today is warm and sunny with a light breeze.",
    "My daughter has had a fever and a sore throat since yesterday.",
    "She bought some fresh bread and milk at the store on her way home.",
    "I need to refill my prescription before the end of the week.",
]
RATES = (16000, 24000, 48000)
MM_HM = BACKCHANNEL_TEXT  # what the call harness has the caller say over the agent


@pytest.fixture(scope="module")
def speech() -> dict[tuple[str, int], Pcm]:
    """Piper's rendering of every sentence at every rate, mono s16le.

    Without Piper's noise the speech is the same on every run, and so are the transcripts.
    """
    config = ServerConfig(hosts=("127.0.0.1",), port=0, workers=1, noise_scale=0.0, noise_w=0.0)
    engine = load_engine(config)
    try:
        voice = next(iter(engine.voices.values()))
        rendered: dict[tuple[str, int], Pcm] = {}
        for text in [*PHRASES, *MORE, MM_HM]:
            for rate in RATES if text == PHRASES[0] else (SAMPLE_RATE,):
                segment = voice.render(
                    text,
                    resampler=StreamResampler(voice.sample_rate, rate),
                    pause_after=0.0,
                    inner_pause=0.3,
                    last=True,
                    with_words=False,
                )
                rendered[text, rate] = np.frombuffer(segment.pcm, dtype=np.int16)
        return rendered
    finally:
        engine.close()


@pytest.fixture(scope="module")
def sphinx() -> Iterator[SphinxSTT]:
    """One STT for the module: its worker process is started once and reused by each test."""
    recognizer = SphinxSTT()
    asyncio.run(recognizer.warm_up())
    yield recognizer
    asyncio.run(recognizer.aclose())


@dataclass
class Heard:
    at: float  # time.perf_counter() on arrival
    event: stt.SpeechEvent

    @property
    def text(self) -> str:
        return self.event.alternatives[0].text if self.event.alternatives else ""


def silence(seconds: float, rate: int = SAMPLE_RATE) -> Pcm:
    return np.zeros(round(seconds * rate), dtype=np.int16)


def scene(clips: Sequence[Pcm], rate: int, *, gap: float = 0.7) -> tuple[Pcm, list[int]]:
    """The clips with ``gap`` s of silence between them, 0.5 s before and 1 s after; also the
    sample index where each clip ends."""
    parts, ends = [silence(0.5, rate)], []
    for i, clip in enumerate(clips):
        parts += [silence(gap, rate), clip] if i else [clip]
        ends.append(sum(len(p) for p in parts))
    return np.concatenate([*parts, silence(1.0, rate)]), ends


async def feed(
    stream: SpeechStream,
    pcm: Pcm,
    rate: int,
    *,
    channels: int = 1,
    realtime: bool = False,
    marks: Sequence[int] = (),
) -> dict[int, float]:
    """Push ``pcm`` in 20 ms frames; return when the frame holding each mark was pushed."""
    loop = asyncio.get_running_loop()
    step = rate // 50
    start = loop.time()
    pushed: dict[int, float] = {}
    for index, offset in enumerate(range(0, len(pcm), step)):
        if realtime:
            await asyncio.sleep(max(0.0, start + (index + 1) * 0.02 - loop.time()))
        chunk = pcm[offset : offset + step]
        data = np.repeat(chunk, channels) if channels > 1 else chunk
        stream.push_frame(rtc.AudioFrame(data.tobytes(), rate, channels, len(chunk)))
        pushed |= {m: time.perf_counter() for m in marks if offset < m <= offset + step}
    return pushed


async def listen(stream: SpeechStream) -> list[Heard]:
    return [Heard(time.perf_counter(), ev) async for ev in stream]


def check_contract(heard: Sequence[Heard]) -> None:
    """What the session relies on: START and END alternate, transcripts come between them,
    none is empty, and each phrase's interims come before its final."""
    in_phrase = final_seen = False
    for h in heard:
        kind = h.event.type
        if kind == Kind.START_OF_SPEECH:
            assert not in_phrase
            in_phrase, final_seen = True, False
        elif kind == Kind.END_OF_SPEECH:
            assert in_phrase
            in_phrase = False
        elif kind in (Kind.INTERIM_TRANSCRIPT, Kind.FINAL_TRANSCRIPT):
            assert in_phrase and h.text and h.event.alternatives[0].language == "en"
            assert not (final_seen and kind == Kind.INTERIM_TRANSCRIPT)
            final_seen |= kind == Kind.FINAL_TRANSCRIPT
        else:
            assert kind == Kind.RECOGNITION_USAGE
    assert not in_phrase


def of(kind: Kind, heard: Sequence[Heard]) -> list[Heard]:
    return [h for h in heard if h.event.type == kind]


def usage(heard: Sequence[Heard]) -> float:
    return sum(
        h.event.recognition_usage.audio_duration
        for h in of(Kind.RECOGNITION_USAGE, heard)
        if h.event.recognition_usage is not None
    )


async def test_phrases_in_real_time(sphinx: SphinxSTT, speech: dict[tuple[str, int], Pcm]) -> None:
    pcm, ends = scene([speech[p, SAMPLE_RATE] for p in PHRASES], SAMPLE_RATE)
    stream = sphinx.stream()
    listener = asyncio.create_task(listen(stream))
    pushed = await feed(stream, pcm, SAMPLE_RATE, realtime=True, marks=ends)
    stream.end_input()
    heard = await listener
    await stream.aclose()

    check_contract(heard)
    finals = of(Kind.FINAL_TRANSCRIPT, heard)
    texts = [h.text for h in finals]
    assert len(finals) == len(PHRASES), texts
    starts = of(Kind.START_OF_SPEECH, heard)
    assert len(starts) == len(of(Kind.END_OF_SPEECH, heard)) == len(PHRASES)
    for phrase, start, final, end in zip(PHRASES, starts, finals, ends, strict=True):
        assert word_error_rate([phrase], [final.text]) <= MAX_WER, final.text
        data = final.event.alternatives[0]
        assert 0 < data.confidence <= 1
        # on the audio's clock the phrase ends where its last sample is (30 ms VAD frames)
        assert abs(data.end_time - end / SAMPLE_RATE) < 0.1
        # interims between the phrase's START and its final
        assert of(Kind.INTERIM_TRANSCRIPT, heard[heard.index(start) : heard.index(final)])

    delays = [final.at - pushed[end] for final, end in zip(finals, ends, strict=True)]
    print(
        f"final after end of speech: p50 {statistics.median(delays):.3f} s, "
        f"max {max(delays):.3f} s (endpoint_silence {ENDPOINT} s)"
    )
    assert statistics.median(delays) <= ENDPOINT + 0.3
    assert max(delays) <= ENDPOINT + 1.0  # a CPU shared with other work can stall one
    assert usage(heard) == pytest.approx(len(pcm) / SAMPLE_RATE, abs=0.03)


async def test_silence_gives_no_transcript(sphinx: SphinxSTT) -> None:
    stream = sphinx.stream()
    listener = asyncio.create_task(listen(stream))
    await feed(stream, silence(3.0), SAMPLE_RATE)
    stream.end_input()
    heard = await listener
    await stream.aclose()
    assert {h.event.type for h in heard} == {Kind.RECOGNITION_USAGE}
    assert usage(heard) == pytest.approx(3.0)


async def test_without_filler_words_a_filler_gives_no_transcript(
    sphinx: SphinxSTT, speech: dict[tuple[str, int], Pcm]
) -> None:
    # as Deepgram with filler_words=False: a backchannel must not become a turn
    finals: dict[bool, list[str]] = {}
    plain = SphinxSTT(filler_words=False)
    try:
        for keep, recognizer in ((True, sphinx), (False, plain)):
            stream = recognizer.stream()
            listener = asyncio.create_task(listen(stream))
            pcm, _ = scene(
                [speech[MM_HM, SAMPLE_RATE], speech[PHRASES[0], SAMPLE_RATE]], SAMPLE_RATE
            )
            await feed(stream, pcm, SAMPLE_RATE)
            stream.end_input()
            heard = await listener
            await stream.aclose()
            finals[keep] = [h.text for h in of(Kind.FINAL_TRANSCRIPT, heard)]
    finally:
        await plain.aclose()
    assert len(finals[True]) == 2  # the "um" was heard (as some short word)
    assert len(finals[False]) == 1  # ...and dropped, with its phrase
    assert finals[False][0] == finals[True][1]


@pytest.mark.parametrize(("rate", "channels"), [(24000, 1), (48000, 1), (48000, 2)])
async def test_other_rates_and_stereo(
    sphinx: SphinxSTT, speech: dict[tuple[str, int], Pcm], rate: int, channels: int
) -> None:
    text = PHRASES[0]
    pcm, _ = scene([speech[text, rate]], rate)
    stream = sphinx.stream()
    listener = asyncio.create_task(listen(stream))
    await feed(stream, pcm, rate, channels=channels)
    stream.end_input()
    heard = await listener
    await stream.aclose()
    check_contract(heard)
    finals = of(Kind.FINAL_TRANSCRIPT, heard)
    assert len(finals) == 1
    assert word_error_rate([text], [finals[0].text]) <= MAX_WER
    assert usage(heard) == pytest.approx(len(pcm) / rate, abs=0.03)


async def test_flush_and_end_of_input_finalize(
    sphinx: SphinxSTT, speech: dict[tuple[str, int], Pcm]
) -> None:
    first, second = PHRASES[0], PHRASES[1]
    stream = sphinx.stream()
    events = aiter(stream)
    # no silence after the phrase: only the flush can end it
    await feed(stream, np.concatenate([silence(0.3), speech[first, SAMPLE_RATE]]), SAMPLE_RATE)
    stream.flush()
    heard: list[Heard] = []
    async with asyncio.timeout(10):
        while not of(Kind.END_OF_SPEECH, heard):
            heard.append(Heard(time.perf_counter(), await anext(events)))
    finals = of(Kind.FINAL_TRANSCRIPT, heard)
    assert len(finals) == 1 and word_error_rate([first], [finals[0].text]) <= MAX_WER

    await feed(stream, np.concatenate([silence(0.3), speech[second, SAMPLE_RATE]]), SAMPLE_RATE)
    stream.end_input()
    heard += [Heard(time.perf_counter(), ev) async for ev in stream]
    await stream.aclose()
    check_contract(heard)
    finals = of(Kind.FINAL_TRANSCRIPT, heard)
    assert len(finals) == 2 and word_error_rate([second], [finals[1].text]) <= MAX_WER


async def test_closing_mid_phrase_leaves_nothing_running(
    sphinx: SphinxSTT, speech: dict[tuple[str, int], Pcm]
) -> None:
    clip = speech[PHRASES[2], SAMPLE_RATE]
    stream = sphinx.stream()
    events = aiter(stream)
    await feed(stream, np.concatenate([silence(0.3), clip[: len(clip) // 2]]), SAMPLE_RATE)
    async with asyncio.timeout(10):
        while (await anext(events)).type != Kind.INTERIM_TRANSCRIPT:
            pass
    await stream.aclose()
    assert stream._task.done() and stream._metrics_task.done()
    assert asyncio.all_tasks() == {asyncio.current_task()}

    # the worker the closed stream left mid-phrase decodes the next stream's speech
    text = PHRASES[1]
    pcm, _ = scene([speech[text, SAMPLE_RATE]], SAMPLE_RATE)
    stream = sphinx.stream()
    listener = asyncio.create_task(listen(stream))
    await feed(stream, pcm, SAMPLE_RATE)
    stream.end_input()
    heard = await listener
    await stream.aclose()
    finals = of(Kind.FINAL_TRANSCRIPT, heard)
    assert len(finals) == 1 and word_error_rate([text], [finals[0].text]) <= MAX_WER


async def test_recognize_a_whole_buffer(
    sphinx: SphinxSTT, speech: dict[tuple[str, int], Pcm]
) -> None:
    text = PHRASES[0]
    pcm = np.concatenate([silence(0.3, 24000), speech[text, 24000], silence(0.3, 24000)])
    event = await sphinx.recognize(rtc.AudioFrame(pcm.tobytes(), 24000, 1, len(pcm)))
    assert event.type == Kind.FINAL_TRANSCRIPT
    assert word_error_rate([text], [event.alternatives[0].text]) <= MAX_WER

    quiet = silence(1.0)
    event = await sphinx.recognize(rtc.AudioFrame(quiet.tobytes(), SAMPLE_RATE, 1, len(quiet)))
    assert event.alternatives[0].text == ""


async def test_word_error_rate_and_cpu(
    sphinx: SphinxSTT, speech: dict[tuple[str, int], Pcm]
) -> None:
    sentences = [*PHRASES, *MORE]
    pcm, _ = scene([speech[s, SAMPLE_RATE] for s in sentences], SAMPLE_RATE)
    workers = [p for p in psutil.Process().children() if "sphinx_stt" in " ".join(p.cmdline())]
    assert len(workers) == 1  # the module's one warm worker, reused by every stream
    worker_before = sum(workers[0].cpu_times()[:2])
    here_before = time.process_time()

    stream = sphinx.stream()
    listener = asyncio.create_task(listen(stream))
    await feed(stream, pcm, SAMPLE_RATE)  # as fast as it decodes: the CPU is all there is
    stream.end_input()
    heard = await listener
    await stream.aclose()

    seconds = len(pcm) / SAMPLE_RATE
    worker_cpu = (sum(workers[0].cpu_times()[:2]) - worker_before) / seconds
    here_cpu = (time.process_time() - here_before) / seconds
    check_contract(heard)
    hypotheses = [h.text for h in of(Kind.FINAL_TRANSCRIPT, heard)]
    assert len(hypotheses) == len(sentences), hypotheses
    wer = word_error_rate(sentences, hypotheses)
    print(
        f"WER {wer:.3f} over {len(sentences)} sentences; CPU per second of audio: "
        f"worker {worker_cpu:.3f} s, event-loop process {here_cpu:.3f} s"
    )
    assert wer <= MAX_WER
    assert worker_cpu + here_cpu < 0.5
