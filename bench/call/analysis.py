"""Measure a call from its recording alone: what the caller heard, when.

The recording is a stereo 16-bit WAV at 16 kHz on one timeline: left the caller as fed in
(clean synthetic speech, digital silence between), right the agent as the caller heard it.
Nothing here trusts the harness's own timestamps: every figure is read off the audio, so
the agent's leading silence, a slow playout or a late cut all count as the caller feels them.

Sound is 5 ms frames louder than ``SOUND_DBFS``.  Caller speech is grouped with the script's
help: its turns are split at the largest gaps (a turn gap holds a whole agent reply or at
least the time to a barge-in, far longer than a mid-sentence pause), then each turn at its
next largest gaps into the scripted parts.  The agent's sound is grouped into utterances
across gaps shorter than ``AGENT_GAP_S`` (Piper's pauses between words and sentences).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

from tests.server.asr import normalize, transcribe, word_errors

from .script import CallScript

SAMPLE_RATE: Final = 16000
FRAME_S: Final = 0.005
"""Detection resolution: onsets and ends are exact to a frame."""
SOUND_DBFS: Final = -50.0
"""Frame RMS above this is sound: 29 dB under speech (~-21 dBFS), far above digital silence.
Piper's hiss between words (-55 to -70 dBFS) stays under it.  So does a word-final plosive's
faint release (a 2 ms burst ~0.1 s after the closure), which therefore does not count."""
AGENT_GAP_S: Final = 0.6
"""Agent sound closer than this is one utterance: Piper's pauses inside and between sentences
reach ~0.4 s, while a reply and the next one are a whole caller turn apart."""
MIN_AGENT_SOUND_S: Final = 0.02
"""A shorter agent utterance (one playout frame) is a click, not speech."""
CALLER_GAP_S: Final = 0.05
"""Caller sound runs closer than this are merged before grouping (stop closures)."""
TRANSCRIBE_MARGIN_S: Final = 0.05
"""Audio kept either side of a reply for the recognizer: a soft onset below the threshold."""
TRANSCRIBE_PAD_S: Final = 0.5
"""Digital silence added either side: pocketsphinx misses first and last words without it."""
GAP_SLACK_S: Final = 0.05
"""How much shorter than scripted a caller's silence may measure (frame rounding)."""
HEARD_WER: Final = 0.3
"""A reply heard whole whose transcript is further than this from its script was not heard
as it should be (the recognizer's own slips on Piper's voice stay under it)."""
BACKCHANNEL_MAX_S: Final = 0.4
"""A caller sound this short, made while the agent talks, is a backchannel ("um", "mm-hm")."""
BACKCHANNEL_APART_S: Final = 0.4
"""...if no other caller sound is this close: the words of a line are closer together."""
WENT_ON_S: Final = 1.0
"""A reply heard for this long after a backchannel went on with it (talked through, or
resumed); one that stops soon after, for good, was cut by it."""

Stereo = npt.NDArray[np.int16]
"""Shape (n, 2): caller left, agent right."""


class AnalysisError(ValueError):
    """The recording does not fit the script (too few caller turns, wrong format)."""


@dataclass(frozen=True)
class Span:
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Reply:
    """One agent reply (or the greeting), as heard, with what a recognizer made of it."""

    start: float
    end: float
    complete: bool
    """False when the caller talked over it and it stopped: its WER is then measured against
    the start of the scripted text that best fits what was said."""
    reference: str
    transcript: str | None
    """None when transcription was skipped."""
    word_errors: int | None
    reference_words: int
    wer: float | None


@dataclass(frozen=True)
class BargeIn:
    """The caller's next turn, started over this turn's reply."""

    caller_start: float
    after_s: float | None
    """Caller start minus the reply's start (the script's ``barge_in_after_s``)."""
    overlapped: bool
    """Whether the agent was sounding when the caller started (else there was nothing to cut)."""
    agent_stop: float | None
    stop_latency_s: float | None
    """From the caller's start to the agent's audio stopping."""
    stopped: bool
    """The agent stopped while the caller was still speaking."""


@dataclass(frozen=True)
class Backchannel:
    """A short sound the caller made over this turn's reply: not a turn; the reply goes on."""

    at: float
    duration: float
    reply_went_on: bool
    """The reply went on after it (talked through, or paused and resumed) for ``WENT_ON_S``,
    or to its scripted end."""
    heard_after_s: float
    """Seconds of the reply heard after it."""
    longest_silence_s: float
    """The longest the agent was quiet after it, within the reply (a pause, then a resume)."""


@dataclass(frozen=True)
class TurnMeasure:
    index: int
    caller: Span
    caller_parts: tuple[Span, ...]
    reply: Reply | None
    """None: the agent never answered before the caller's next turn."""
    voice_to_voice_s: float | None
    """End of caller speech to the first sound of the reply (negative: it began before)."""
    cut_ins: tuple[Span, ...]
    """Where the agent sounded during the caller's turn (mid-sentence gaps included), one span
    per agent utterance, clipped to the turn; a reply the caller barged in on is not one."""
    barge_in: BargeIn | None
    backchannel: Backchannel | None = None

    def to_json(self) -> dict[str, Any]:
        return cast(dict[str, Any], _jsonable(self))


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float | None
    p95: float | None
    mean: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, None, None, None, None)
        a = np.asarray(values, dtype=np.float64)
        return cls(
            n=len(a),
            p50=float(np.percentile(a, 50)),
            p95=float(np.percentile(a, 95)),
            mean=float(a.mean()),
            max=float(a.max()),
        )


@dataclass(frozen=True)
class CallMeasure:
    duration_s: float
    greeting: Reply | None
    turns: tuple[TurnMeasure, ...]
    voice_to_voice: Summary
    barge_in_stop: Summary
    """Stop latencies of the barge-ins that found the agent talking."""
    cut_ins: int
    missed_replies: int
    backchannels: int
    replies_lost_to_backchannels: int
    wer: float | None
    """All replies' word errors over all their reference words (greeting included)."""
    replies_misheard: int = 0
    """Replies heard whole whose word error rate is over ``HEARD_WER`` (greeting included)."""

    def to_json(self) -> dict[str, Any]:
        return cast(dict[str, Any], _jsonable(self))


def read_wav(path: Path) -> Stereo:
    """A call recording as (n, 2) int16; refuses anything but stereo 16-bit 16 kHz."""
    with wave.open(str(path), "rb") as wav:
        shape = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
        if shape != (2, 2, SAMPLE_RATE):
            raise AnalysisError(
                f"{path}: want stereo 16-bit {SAMPLE_RATE} Hz, got {shape[0]} channels, "
                f"{8 * shape[1]}-bit, {shape[2]} Hz"
            )
        data = wav.readframes(wav.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.int16).reshape(-1, 2)


def sound_spans(channel: npt.NDArray[np.int16], *, merge_gap: float) -> list[Span]:
    """Runs of sound in one channel, merged across gaps shorter than ``merge_gap`` seconds."""
    size = round(SAMPLE_RATE * FRAME_S)
    n = -(-len(channel) // size)
    padded = np.zeros(n * size, dtype=np.float64)
    padded[: len(channel)] = channel
    rms = np.sqrt(np.mean(padded.reshape(n, size) ** 2, axis=1))
    loud = (rms > 32768.0 * 10 ** (SOUND_DBFS / 20)).astype(np.int8)
    edges = np.diff(np.concatenate(([0], loud, [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    spans: list[Span] = []
    for s, e in zip(starts * FRAME_S, ends * FRAME_S, strict=True):
        if spans and s - spans[-1].end < merge_gap:
            spans[-1] = Span(spans[-1].start, float(e))
        else:
            spans.append(Span(float(s), float(e)))
    return spans


def agent_utterances(agent: npt.NDArray[np.int16]) -> list[Span]:
    spans = sound_spans(agent, merge_gap=AGENT_GAP_S)
    return [s for s in spans if s.duration >= MIN_AGENT_SOUND_S]


def backchannels(
    caller: npt.NDArray[np.int16], agent: list[Span], script: CallScript
) -> list[Span]:
    """The caller's backchannels: lone short sounds over the agent, as many as the script
    has.  Lone: the words of a phrase are closer together than ``BACKCHANNEL_APART_S``."""
    expected = sum(t.backchannel_after_s is not None for t in script.turns)
    found = [
        r
        for r in sound_spans(caller, merge_gap=BACKCHANNEL_APART_S)
        if r.duration <= BACKCHANNEL_MAX_S and _sounding_at(agent, r.start) is not None
    ]
    return found[:expected]


def caller_turns(
    caller: npt.NDArray[np.int16], script: CallScript, *, without: Sequence[Span] = ()
) -> list[list[Span]]:
    """The caller's speech as the script's turns, each as its parts (``without`` the
    backchannels)."""
    runs = [
        r
        for r in sound_spans(caller, merge_gap=CALLER_GAP_S)
        if not any(b.start <= r.start and r.end <= b.end for b in without)
    ]
    turns = _split_at_largest_gaps(runs, len(script.turns))
    if turns is None:
        raise AnalysisError(
            f"caller channel: {len(runs)} stretches of speech, too few for the script's "
            f"{len(script.turns)} turns (was the call cut short?)"
        )
    grouped: list[list[Span]] = []
    for index, (runs_in_turn, turn) in enumerate(zip(turns, script.turns, strict=True)):
        parts = _split_at_largest_gaps(runs_in_turn, len(turn.caller))
        if parts is None:
            raise AnalysisError(
                f"caller turn {index}: {len(runs_in_turn)} stretches of speech, too few for "
                f"its {len(turn.caller)} scripted parts"
            )
        spans = [Span(p[0].start, p[-1].end) for p in parts]
        # The splits are forced to the script's counts; these checks catch a recording whose
        # shape is not the script's (a call cut short) instead of measuring the wrong speech.
        # Caller audio is fed exactly, so a scripted silence can only measure longer.
        for a, b in itertools.pairwise(spans):
            if b.start - a.end < turn.gap_s - GAP_SLACK_S:
                raise AnalysisError(
                    f"caller turn {index}: parts {b.start - a.end:.2f} s apart, the script "
                    f"pauses {turn.gap_s:.2f} s (does the recording follow this script?)"
                )
        if index > 0 and script.turns[index - 1].barge_in_after_s is None:
            gap = spans[0].start - grouped[-1][-1].end
            if gap < turn.pause_before_s - GAP_SLACK_S:
                raise AnalysisError(
                    f"caller turn {index}: starts {gap:.2f} s after the previous one, less "
                    f"than its pause_before_s of {turn.pause_before_s:.2f} s (does the "
                    "recording follow this script, or was the call cut short?)"
                )
        grouped.append(spans)
    return grouped


def analyze_call(
    samples: Stereo, script: CallScript, *, transcribe_replies: bool = True
) -> CallMeasure:
    """Every figure of one call, from its recording and its script."""
    if samples.ndim != 2 or samples.shape[1] != 2:
        raise AnalysisError(f"want (n, 2) samples, got shape {samples.shape}")
    caller, agent = samples[:, 0], samples[:, 1]
    duration = len(samples) / SAMPLE_RATE
    utterances = agent_utterances(agent)
    blips = backchannels(caller, utterances, script)
    turns = caller_turns(caller, script, without=blips)
    spans = [Span(parts[0].start, parts[-1].end) for parts in turns]

    def reply(start: float, end: float, reference: str, complete: bool) -> Reply:
        return _reply(
            agent,
            start,
            end,
            reference=reference,
            complete=complete,
            transcribe_it=transcribe_replies,
        )

    before_first = [u for u in utterances if u.start < spans[0].start]
    greeting = (
        reply(before_first[0].start, max(u.end for u in before_first), script.greeting, True)
        if before_first
        else None
    )

    measures: list[TurnMeasure] = []
    for i, (turn, parts, span) in enumerate(zip(script.turns, turns, spans, strict=True)):
        following = spans[i + 1] if i + 1 < len(spans) else None
        next_start = following.start if following else math.inf

        # The reply: the first utterance that begins after the caller does and is still
        # sounding after they stop (a blip that began and ended inside the turn is a cut-in).
        first = next(
            (u for u in utterances if span.start < u.start < next_start and u.end > span.end),
            None,
        )
        barge_in = None
        if turn.barge_in_after_s is not None and following is not None:
            barge_in = _barge_in(utterances, following, first)

        measured: Reply | None = None
        if first is not None:
            end = max(u.end for u in utterances if first.start <= u.start < next_start)
            cut = barge_in is not None and barge_in.stopped
            measured = reply(first.start, end, turn.reply, not cut)

        # the reply the caller barged in on is expected to overlap the start of this turn
        barged = None
        if i > 0 and script.turns[i - 1].barge_in_after_s is not None:
            barged = _sounding_at(utterances, span.start)
        cut_ins = tuple(
            Span(max(u.start, span.start), min(u.end, span.end))
            for u in utterances
            if u.start < span.end and u.end > span.start and u != barged
        )
        backchannel = None
        if turn.backchannel_after_s is not None:
            blip = next((b for b in blips if span.end < b.start < next_start), None)
            if blip is not None:
                backchannel = _backchannel(agent, blip, next_start, measured)
        measures.append(
            TurnMeasure(
                index=i,
                caller=span,
                caller_parts=tuple(parts),
                reply=measured,
                voice_to_voice_s=None if first is None else first.start - span.end,
                cut_ins=cut_ins,
                barge_in=barge_in,
                backchannel=backchannel,
            )
        )

    replies = [r for r in [greeting, *(m.reply for m in measures)] if r is not None]
    scored = [r for r in replies if r.word_errors is not None]
    words = sum(r.reference_words for r in scored)
    return CallMeasure(
        duration_s=duration,
        greeting=greeting,
        turns=tuple(measures),
        voice_to_voice=Summary.of(
            [m.voice_to_voice_s for m in measures if m.voice_to_voice_s is not None]
        ),
        barge_in_stop=Summary.of(
            [
                m.barge_in.stop_latency_s
                for m in measures
                if m.barge_in is not None and m.barge_in.stop_latency_s is not None
            ]
        ),
        cut_ins=sum(len(m.cut_ins) for m in measures),
        missed_replies=sum(m.reply is None for m in measures),
        backchannels=sum(m.backchannel is not None for m in measures),
        replies_lost_to_backchannels=sum(
            m.backchannel is not None and not m.backchannel.reply_went_on for m in measures
        ),
        wer=sum(r.word_errors or 0 for r in scored) / words if scored and words else None,
        replies_misheard=sum(
            r.complete and r.wer is not None and r.wer > HEARD_WER for r in replies
        ),
    )


def _split_at_largest_gaps(runs: list[Span], groups: int) -> list[list[Span]] | None:
    """``runs`` cut into ``groups`` at their ``groups - 1`` largest gaps (None: too few)."""
    if len(runs) < groups:
        return None
    gaps = [runs[k + 1].start - runs[k].end for k in range(len(runs) - 1)]
    # stable sort: of equal gaps the earlier wins, so the result is deterministic
    cuts = sorted(sorted(range(len(gaps)), key=lambda k: -gaps[k])[: groups - 1])
    out: list[list[Span]] = []
    begin = 0
    for k in [*cuts, len(runs) - 1]:
        out.append(runs[begin : k + 1])
        begin = k + 1
    return out


def _backchannel(
    agent: npt.NDArray[np.int16], blip: Span, until: float, reply: Reply | None
) -> Backchannel:
    end = min(until, len(agent) / SAMPLE_RATE)
    after = [
        Span(max(s.start, blip.end), min(s.end, end))
        for s in sound_spans(agent, merge_gap=0.0)
        if s.end > blip.end and s.start < end
    ]
    heard = sum(s.duration for s in after)
    gaps = [b.start - a.end for a, b in itertools.pairwise(after)]
    if after:
        gaps.append(after[0].start - blip.end)
    finished = reply is not None and reply.wer is not None and reply.wer <= 0.35
    return Backchannel(
        at=blip.start,
        duration=blip.duration,
        reply_went_on=heard >= WENT_ON_S or finished,
        heard_after_s=heard,
        longest_silence_s=max(gaps, default=0.0),
    )


def _sounding_at(utterances: list[Span], t: float) -> Span | None:
    return next((u for u in utterances if u.start <= t < u.end), None)


def _barge_in(utterances: list[Span], caller: Span, reply: Span | None) -> BargeIn:
    talking = _sounding_at(utterances, caller.start)
    after = None if reply is None else caller.start - reply.start
    if talking is None:
        return BargeIn(caller.start, after, False, None, None, False)
    return BargeIn(
        caller_start=caller.start,
        after_s=after,
        overlapped=True,
        agent_stop=talking.end,
        stop_latency_s=talking.end - caller.start,
        stopped=talking.end < caller.end,
    )


def transcribe_speech(pcm: bytes) -> str:
    """What pocketsphinx hears in 16 kHz mono s16le ``pcm``, padded with digital silence
    (it misses first and last words without it)."""
    pad = bytes(2 * round(TRANSCRIBE_PAD_S * SAMPLE_RATE))
    return transcribe(pad + pcm + pad)


def _reply(
    agent: npt.NDArray[np.int16],
    start: float,
    end: float,
    *,
    reference: str,
    complete: bool,
    transcribe_it: bool,
) -> Reply:
    ref = normalize(reference)
    if not transcribe_it:
        return Reply(start, end, complete, reference, None, None, len(ref), None)
    lo = max(0, round((start - TRANSCRIBE_MARGIN_S) * SAMPLE_RATE))
    hi = round((end + TRANSCRIBE_MARGIN_S) * SAMPLE_RATE)
    text = transcribe_speech(agent[lo:hi].astype("<i2").tobytes())
    hyp = normalize(text)
    if complete or not ref:
        errors, words = word_errors(ref, hyp), len(ref)
    else:
        # what was said before the cut, against the scripted text up to where it got to
        errors, words = min(
            ((word_errors(ref[:k], hyp), k) for k in range(1, len(ref) + 1)),
            key=lambda ew: (ew[0], -ew[1]),
        )
    return Reply(
        start, end, complete, reference, text, errors, words, errors / words if words else None
    )


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value
