"""bench.call.analysis and plot: measuring calls built from real Piper speech at known offsets.

The truth is where each clip was placed: clips are trimmed to their first and last 5 ms
(any alignment, sample by sample) louder than -46 dBFS RMS, so a clip placed at t starts
sounding at t.  That is 4 dB over the analysis's -50 dBFS on its own 5 ms grid, so the edge
the truth keeps is sound on that grid too, wherever it falls; fainter edges (a plosive's
2 ms release 100 ms after the closure) are trimmed off rather than argued about.
A cut is a hard cut, as a stopped playout is.
"""

from __future__ import annotations

import json
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bench.call.analysis import (
    FRAME_S,
    SAMPLE_RATE,
    AnalysisError,
    CallMeasure,
    Span,
    Stereo,
    Summary,
    analyze_call,
    read_wav,
    sound_spans,
)
from bench.call.plot import plot_call
from bench.call.script import parse_script
from tests.server.asr import normalize, word_errors
from tts_server.audio import StreamResampler
from tts_server.config import ServerConfig
from tts_server.engines import load_engine

TOL = 0.02  # seconds, every figure: edges are found to a 5 ms frame or two
EDGE_DBFS = -46.0

Pcm = npt.NDArray[np.int16]

SCRIPT = parse_script(
    {
        "greeting": "Hello, I'm Avery. How can I help you today?",
        "turns": [
            {
                "caller": "I think I sprained my ankle this morning.",
                "reply": "I'm sorry to hear that. Can you put any weight on it?",
            },
            {
                "caller": ["It hurts a lot,", "but I can walk a little."],
                "gap_s": 0.7,
                "reply": "Keep it raised and put ice on it for twenty minutes at a time. "
                "If the swelling gets worse, please see a doctor today.",
                "barge_in_after_s": 1.5,
            },
            {
                "caller": "Should I take something for the pain?",
                "reply": "A common pain reliever can help.",
            },
            {"caller": "Thank you for your help.", "reply": "You are welcome. Take care."},
        ],
    }
)


@pytest.fixture(scope="module")
def clips() -> Iterator[dict[str, Pcm]]:
    """Every line of SCRIPT as 16 kHz speech from the project's Piper voice, trimmed.

    Without Piper's noise the speech, and what pocketsphinx hears in it, is the same on every
    run: with it, one rendering in many was heard as no word of the greeting at all.
    """
    config = ServerConfig(hosts=("127.0.0.1",), port=0, workers=1, noise_scale=0.0, noise_w=0.0)
    engine = load_engine(config)
    voice = next(iter(engine.voices.values()))
    texts = [SCRIPT.greeting]
    for turn in SCRIPT.turns:
        texts += [*turn.caller, turn.reply]
    rendered = {}
    for text in texts:
        segment = voice.render(
            text,
            resampler=StreamResampler(voice.sample_rate, SAMPLE_RATE),
            pause_after=0.0,
            inner_pause=config.sentence_silence,  # the server's pause between sentences
            last=True,
            with_words=False,
        )
        rendered[text] = audible(np.frombuffer(segment.pcm, dtype="<i2").astype(np.int16))
    engine.close()
    yield rendered


def audible(pcm: Pcm) -> Pcm:
    """``pcm`` from its first to its last 5 ms window louder than EDGE_DBFS."""
    window = round(SAMPLE_RATE * FRAME_S)
    energy = np.concatenate(([0.0], np.cumsum(pcm.astype(np.float64) ** 2)))
    rms = np.sqrt((energy[window:] - energy[:-window]) / window)
    loud = np.flatnonzero(rms > 32768 * 10 ** (EDGE_DBFS / 20))
    return pcm[loud[0] : loud[-1] + window]


def seconds(pcm: Pcm) -> float:
    return len(pcm) / SAMPLE_RATE


class Recording:
    """A call under construction: clips placed on either channel at chosen times."""

    def __init__(self) -> None:
        self.samples: Stereo = np.zeros((SAMPLE_RATE * 60, 2), dtype=np.int16)
        self.length = 0

    def put(self, channel: int, at: float, pcm: Pcm, *, cut_at: float = math.inf) -> Span:
        """Place ``pcm`` at ``at`` (cut hard at ``cut_at``); the span where it sounds."""
        if cut_at < math.inf:
            pcm = audible(pcm[: round((cut_at - at) * SAMPLE_RATE)])
        offset = round(at * SAMPLE_RATE)
        self.samples[offset : offset + len(pcm), channel] = pcm
        self.length = max(self.length, offset + len(pcm))
        return Span(offset / SAMPLE_RATE, (offset + len(pcm)) / SAMPLE_RATE)

    def caller(self, at: float, pcm: Pcm) -> Span:
        return self.put(0, at, pcm)

    def agent(self, at: float, pcm: Pcm, *, cut_at: float = math.inf) -> Span:
        return self.put(1, at, pcm, cut_at=cut_at)

    def done(self, tail: float = 0.5) -> Stereo:
        return self.samples[: self.length + round(tail * SAMPLE_RATE)].copy()


@dataclass
class Truth:
    greeting: Span
    callers: list[list[Span]]
    replies: list[Span | None]
    cut_ins: list[list[Span]]


def line(clips: dict[str, Pcm], turn: int, part: int = 0) -> Pcm:
    return clips[SCRIPT.turns[turn].caller[part]]


def reply(clips: dict[str, Pcm], turn: int) -> Pcm:
    return clips[SCRIPT.turns[turn].reply]


def polite_call(clips: dict[str, Pcm]) -> tuple[Stereo, Truth]:
    """Replies 0.55/0.80/0.65/0.45 s after the caller; the agent cuts in during turn 1's
    mid-sentence pause and is stopped by the caller's next words; turn 2 barges in 1.5 s into
    reply 1, which stops 0.35 s later."""
    rec = Recording()
    greeting = rec.agent(0.4, clips[SCRIPT.greeting])
    c0 = rec.caller(greeting.end + 1.0, line(clips, 0))
    r0 = rec.agent(c0.end + 0.55, reply(clips, 0))
    c1a = rec.caller(r0.end + 1.0, line(clips, 1, 0))
    c1b_at = c1a.end + 0.7
    cut_in = rec.agent(c1a.end + 0.35, reply(clips, 1), cut_at=c1b_at + 0.25)
    c1b = rec.caller(c1b_at, line(clips, 1, 1))
    r1_at = c1b.end + 0.8
    c2 = rec.caller(r1_at + 1.5, line(clips, 2))
    r1 = rec.agent(r1_at, reply(clips, 1), cut_at=c2.start + 0.35)
    r2 = rec.agent(c2.end + 0.65, reply(clips, 2))
    c3 = rec.caller(r2.end + 0.5, line(clips, 3))
    r3 = rec.agent(c3.end + 0.45, reply(clips, 3))
    truth = Truth(
        greeting, [[c0], [c1a, c1b], [c2], [c3]], [r0, r1, r2, r3], [[], [cut_in], [], []]
    )
    return rec.done(), truth


def rude_call(clips: dict[str, Pcm]) -> tuple[Stereo, Truth]:
    """No greeting; the agent starts replying 0.3 s before the caller finishes turn 1 and
    talks on through turn 2's barge-in; turn 3 is never answered."""
    rec = Recording()
    c0 = rec.caller(0.5, line(clips, 0))
    r0 = rec.agent(c0.end + 0.5, reply(clips, 0))
    c1a = rec.caller(r0.end + 1.0, line(clips, 1, 0))
    c1b = rec.caller(c1a.end + 0.7, line(clips, 1, 1))
    r1 = rec.agent(c1b.end - 0.3, reply(clips, 1))
    c2 = rec.caller(r1.start + 1.5, line(clips, 2))
    assert r1.end > c2.end + 0.5, "reply 1 must outlast turn 2"
    r2 = rec.agent(r1.end + 0.8, reply(clips, 2))
    c3 = rec.caller(r2.end + 1.0, line(clips, 3))
    truth = Truth(Span(0, 0), [[c0], [c1a, c1b], [c2], [c3]], [r0, r1, r2, None], [])
    return rec.done(tail=2.0), truth


@pytest.fixture(scope="module")
def polite(clips: dict[str, Pcm]) -> tuple[Stereo, Truth, CallMeasure]:
    samples, truth = polite_call(clips)
    return samples, truth, analyze_call(samples, SCRIPT)


def near(value: float | None, expected: float) -> bool:
    return value is not None and abs(value - expected) <= TOL


def assert_span(measured: Span, expected: Span) -> None:
    assert near(measured.start, expected.start), (measured, expected)
    assert near(measured.end, expected.end), (measured, expected)


def test_caller_turns_and_parts(polite: tuple[Stereo, Truth, CallMeasure]) -> None:
    _, truth, measure = polite
    assert len(measure.turns) == 4
    for turn, parts in zip(measure.turns, truth.callers, strict=True):
        assert len(turn.caller_parts) == len(parts)
        for measured, expected in zip(turn.caller_parts, parts, strict=True):
            assert_span(measured, expected)
        assert_span(turn.caller, Span(parts[0].start, parts[-1].end))


def test_voice_to_voice(polite: tuple[Stereo, Truth, CallMeasure]) -> None:
    measure = polite[2]
    for turn, expected in zip(measure.turns, [0.55, 0.80, 0.65, 0.45], strict=True):
        assert near(turn.voice_to_voice_s, expected), (turn.index, turn.voice_to_voice_s)
    assert near(measure.voice_to_voice.p50, 0.60)
    assert measure.voice_to_voice.n == 4
    assert near(measure.voice_to_voice.max, 0.80)


def test_replies_and_greeting(polite: tuple[Stereo, Truth, CallMeasure]) -> None:
    _, truth, measure = polite
    assert measure.greeting is not None
    assert_span(Span(measure.greeting.start, measure.greeting.end), truth.greeting)
    for turn, expected in zip(measure.turns, truth.replies, strict=True):
        assert turn.reply is not None and expected is not None
        assert_span(Span(turn.reply.start, turn.reply.end), expected)
    assert measure.missed_replies == 0


def test_cut_in_during_the_mid_sentence_pause(polite: tuple[Stereo, Truth, CallMeasure]) -> None:
    _, truth, measure = polite
    for turn, expected in zip(measure.turns, truth.cut_ins, strict=True):
        assert len(turn.cut_ins) == len(expected), turn
        for measured, span in zip(turn.cut_ins, expected, strict=True):
            assert_span(measured, span)
    assert measure.cut_ins == 1


def test_barge_in(polite: tuple[Stereo, Truth, CallMeasure]) -> None:
    _, truth, measure = polite
    assert [t.barge_in is not None for t in measure.turns] == [False, True, False, False]
    barge = measure.turns[1].barge_in
    assert barge is not None
    stop = truth.replies[1]
    assert stop is not None
    caller = truth.callers[2][0]
    assert barge.overlapped and barge.stopped
    assert near(barge.caller_start, caller.start)
    assert near(barge.after_s, 1.5)
    assert near(barge.agent_stop, stop.end)
    assert near(barge.stop_latency_s, stop.end - caller.start)
    assert 0.2 < stop.end - caller.start < 0.351  # the cut lands in speech, not a pause
    assert measure.barge_in_stop.n == 1
    assert near(measure.barge_in_stop.p50, stop.end - caller.start)


def test_transcripts_and_wer(polite: tuple[Stereo, Truth, CallMeasure]) -> None:
    _, _, measure = polite
    replies = [measure.greeting, *(t.reply for t in measure.turns)]
    for r in replies:
        assert r is not None and r.transcript is not None and r.wer is not None
        # pocketsphinx stumbles on names (Avery)
        assert r.wer < 1.0, (r.reference, r.transcript)
        ref, hyp = normalize(r.reference)[: r.reference_words], normalize(r.transcript)
        assert r.word_errors == word_errors(ref, hyp)
    cut = measure.turns[1].reply
    assert cut is not None and not cut.complete
    # scored against the words it got to say, not the whole scripted reply
    assert cut.reference_words < len(SCRIPT.turns[1].reply.split()) / 2
    assert all(r is not None and r.complete for r in replies if r is not cut)
    assert measure.wer is not None and measure.wer <= 0.5


def test_json(polite: tuple[Stereo, Truth, CallMeasure]) -> None:
    _, _, measure = polite
    data = json.loads(json.dumps(measure.to_json()))
    assert data["cut_ins"] == 1
    assert data["turns"][1]["barge_in"]["stopped"] is True
    assert data["turns"][1]["caller_parts"][1]["start"] == round(
        measure.turns[1].caller_parts[1].start, 4
    )
    assert data["voice_to_voice"]["p95"] == round(measure.voice_to_voice.p95 or 0, 4)
    assert measure.turns[0].to_json()["index"] == 0


def test_wav_round_trip(polite: tuple[Stereo, Truth, CallMeasure], tmp_path: Path) -> None:
    samples, _, _ = polite
    path = tmp_path / "call.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.astype("<i2").tobytes())
    assert np.array_equal(read_wav(path), samples)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples[:, 0].tobytes())
    with pytest.raises(AnalysisError, match="want stereo 16-bit 16000 Hz, got 1 channels"):
        read_wav(path)


def test_plot(polite: tuple[Stereo, Truth, CallMeasure], tmp_path: Path) -> None:
    samples, _, measure = polite
    path = tmp_path / "call.png"
    plot_call(samples, measure, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000


def test_talking_over_the_caller_and_a_missed_reply(clips: dict[str, Pcm]) -> None:
    samples, truth = rude_call(clips)
    measure = analyze_call(samples, SCRIPT, transcribe_replies=False)
    assert measure.greeting is None
    v2v = [t.voice_to_voice_s for t in measure.turns]
    r2 = truth.replies[2]
    assert r2 is not None
    assert near(v2v[0], 0.5) and near(v2v[1], -0.3) and v2v[3] is None
    assert near(v2v[2], r2.start - truth.callers[2][0].end)
    [cut_in] = measure.turns[1].cut_ins  # the reply began before the caller finished
    r1 = truth.replies[1]
    assert r1 is not None
    assert_span(cut_in, Span(r1.start, truth.callers[1][-1].end))
    barge = measure.turns[1].barge_in
    assert barge is not None and barge.overlapped and not barge.stopped
    assert near(barge.stop_latency_s, r1.end - truth.callers[2][0].start)
    assert measure.turns[2].cut_ins == ()  # the reply barged in on is not a cut-in
    assert measure.turns[3].reply is None and measure.missed_replies == 1
    reply1 = measure.turns[1].reply
    assert reply1 is not None and reply1.complete and reply1.transcript is None
    assert measure.wer is None


def test_a_call_cut_short_is_refused(clips: dict[str, Pcm]) -> None:
    samples, truth = polite_call(clips)
    two_turns = samples[: round((truth.callers[1][-1].end + 0.5) * SAMPLE_RATE)]
    with pytest.raises(AnalysisError, match=r"caller turn \d: "):
        analyze_call(two_turns, SCRIPT, transcribe_replies=False)
    beeps = np.zeros((SAMPLE_RATE * 2, 2), dtype=np.int16)
    beeps[SAMPLE_RATE // 2 : SAMPLE_RATE, 0] = tone(0.5, -20.0)
    with pytest.raises(AnalysisError, match="1 stretches of speech, too few for the script's 4"):
        analyze_call(beeps, SCRIPT, transcribe_replies=False)
    with pytest.raises(AnalysisError, match="want \\(n, 2\\) samples"):
        analyze_call(beeps[:, 0], SCRIPT)


def tone(seconds: float, dbfs: float) -> Pcm:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    amplitude = 32767 * 10 ** (dbfs / 20) * math.sqrt(2)  # RMS at dbfs
    return (amplitude * np.sin(2 * math.pi * 220 * t)).astype(np.int16)


def test_sound_spans_threshold_and_merging() -> None:
    channel = np.zeros(SAMPLE_RATE, dtype=np.int16)
    for start, length, level in [(0.1, 0.2, -30.0), (0.5, 0.1, -45.0), (0.7, 0.2, -58.0)]:
        at = round(start * SAMPLE_RATE)
        channel[at : at + round(length * SAMPLE_RATE)] = tone(length, level)
    assert sound_spans(channel, merge_gap=0.1) == [Span(0.1, 0.3), Span(0.5, 0.6)]
    assert sound_spans(channel, merge_gap=0.25) == [Span(0.1, 0.6)]  # hiss below -50 is silence
    assert sound_spans(np.zeros(100, dtype=np.int16), merge_gap=0.1) == []


def test_summary() -> None:
    assert Summary.of([]) == Summary(0, None, None, None, None)
    summary = Summary.of([0.1, 0.2, 0.3, 0.4, 1.0])
    assert summary.p50 == pytest.approx(0.3)
    assert summary.p95 == pytest.approx(0.88)
    assert summary.max == 1.0 and summary.n == 5
