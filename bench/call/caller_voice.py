"""The caller's voice: each scripted line spoken by the local TTS server, as a person says it.

A person who pauses mid-sentence ("It hurts a lot, ... but I can walk a little.") keeps the
intonation of an unfinished sentence up to the pause; that is what tells a listener, and the
end-of-turn model, to wait.  So a line in parts is spoken as one sentence and cut at its
natural pause between the parts, not spoken as separate sentences, whose every end falls
like a finished one.  The driver then plays the parts with the script's silence between them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Final

import numpy as np
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT, TimedString
from livekit.agents.utils import is_given

from tts_custom.knowlithictts import TTS

from .analysis import sound_spans

SAMPLE_RATE: Final = 16000
# how far from the estimated word boundary the natural pause is looked for
_SEARCH_S: Final = 0.3


async def speak_line(voice: TTS, parts: Sequence[str]) -> list[bytes]:
    """``parts`` spoken as one sentence, cut at the pauses between them: one clip a part."""
    pcm, words = await _synthesize(voice, " ".join(parts))
    if len(parts) == 1:
        return [pcm]
    samples = np.frombuffer(pcm, dtype="<i2")
    clips: list[bytes] = []
    cursor = 0
    spoken = 0
    for part in parts[:-1]:
        spoken += len(part.split())
        boundary = _boundary(words, spoken, len(samples) / SAMPLE_RATE)
        start, end = _pause_around(samples, boundary)
        clips.append(samples[cursor:start].tobytes())
        cursor = end
    clips.append(samples[cursor:].tobytes())
    return clips


async def _synthesize(voice: TTS, text: str) -> tuple[bytes, list[TimedString]]:
    audio: list[bytes] = []
    words: list[TimedString] = []
    async with voice.synthesize(text) as stream:
        async for event in stream:
            audio.append(event.frame.data.tobytes())
            words.extend(event.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, []))
    return b"".join(audio), words


def _boundary(words: Sequence[TimedString], count: int, duration: float) -> float:
    """Seconds into the sentence between its ``count``-th and next word (estimated)."""
    timed = [
        (w.start_time, w.end_time)
        for w in words
        if w.strip() and is_given(w.start_time) and is_given(w.end_time)
    ]
    if 0 < count < len(timed):
        return (timed[count - 1][1] + timed[count][0]) / 2
    return duration / 2  # no timings: the middle, and the pause search does the rest


def _pause_around(samples: np.ndarray, at: float) -> tuple[int, int]:
    """The silence nearest ``at`` seconds (its first and last sample), or a cut at ``at``."""
    lo = max(0, int((at - _SEARCH_S) * SAMPLE_RATE))
    hi = min(len(samples), int((at + _SEARCH_S) * SAMPLE_RATE))
    spans = sound_spans(samples[lo:hi], merge_gap=0.0)
    gaps = [(a.end, b.start) for a, b in itertools.pairwise(spans) if b.start > a.end]
    if not gaps:
        cut = int(at * SAMPLE_RATE)
        return cut, cut
    middle = at - lo / SAMPLE_RATE
    start, end = max(gaps, key=lambda g: (g[1] - g[0]) - abs((g[0] + g[1]) / 2 - middle))
    return lo + int(start * SAMPLE_RATE), lo + int(end * SAMPLE_RATE)


BACKCHANNEL_S: Final = 0.3


# The short sound the caller makes over the agent.  An "um": the offline recognizer hears
# it as "um", a filler word, as Deepgram would; "mm-hm", "mm" or "hm" it hears as random
# words ("the man", "it's"), which Deepgram would not, so they would test the stand-in.
BACKCHANNEL_TEXT: Final = "Um."


async def backchannel(
    voice: TTS, text: str = BACKCHANNEL_TEXT, seconds: float = BACKCHANNEL_S
) -> bytes:
    """A short sound: the start of ``text`` spoken, ``seconds`` long, faded out (no click)."""
    pcm, _ = await _synthesize(voice, text)
    return onset(pcm, seconds)


def onset(pcm: bytes, seconds: float) -> bytes:
    """The first ``seconds`` of the sound in ``pcm`` (16 kHz), faded out over 30 ms."""
    samples = np.frombuffer(pcm, dtype="<i2")
    spans = sound_spans(samples, merge_gap=0.1)
    start = int(spans[0].start * SAMPLE_RATE) if spans else 0
    clip = samples[start : start + int(seconds * SAMPLE_RATE)].astype(np.float64)
    fade = min(len(clip), int(0.03 * SAMPLE_RATE))
    clip[len(clip) - fade :] *= np.linspace(1.0, 0.0, fade)
    return clip.astype("<i2").tobytes()
