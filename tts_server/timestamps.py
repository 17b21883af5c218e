"""Word timings for a segment, from phoneme times.

Piper reports, at best, how many samples each phoneme took (alignments, only for voices
exported with that output).  Either way the words of the text are mapped onto a sequence of
phoneme intervals: word *i* takes the share of phonemes its own phonemization has.  With
alignments the intervals are real; without, they are spread evenly over the speech in the
audio (so pauses and silences are still excluded) and the result is marked ``estimated``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# Piper's phoneme stream also holds word gaps, stress marks, punctuation and the BOS/EOS/pad
# symbols; none of them is a spoken phoneme of a word.
_NOT_PHONEMES: Final = frozenset({" ", "ˈ", "ˌ", "^", "$", "_", "‖", "|"})
_SYMBOL_WEIGHTS: Final = {
    "ˈ": 1.25, "ˌ": 1.25, " ": 1.15, ",": 2.75, ";": 2.75, ":": 2.75, "—": 2.75,
    ".": 1.9, "!": 1.9, "?": 1.9,
}  # fmt: skip
_WORD: Final = re.compile(r"\S+")
_EDGE_PUNCTUATION: Final = "\"'“”‘’()[]{}<>«».,;:!?…—–-*•"


@dataclass(frozen=True)
class Interval:
    start: float
    end: float


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float
    end: float


def is_phoneme(symbol: str) -> bool:
    return symbol not in _NOT_PHONEMES and any(ch.isalpha() for ch in symbol)


def count_phonemes(phonemes: Sequence[str]) -> int:
    return sum(1 for p in phonemes if is_phoneme(p))


def text_words(text: str) -> list[str]:
    """The words of ``text`` as they are reported: surrounding punctuation stripped."""
    words = []
    for match in _WORD.finditer(text):
        word = match.group().strip(_EDGE_PUNCTUATION)
        if any(ch.isalnum() for ch in word):
            words.append(word)
    return words


def estimated_intervals(symbols: Sequence[str], start: float, end: float) -> list[Interval]:
    """Phoneme intervals spread over ``[start, end]`` by each symbol's typical length.

    The weights are mean durations relative to a phoneme, measured from the alignments of
    the joe voice (stress marks, word gaps and clause marks take time of their own).
    """
    weights = [_symbol_weight(s) for s in symbols]
    total = sum(weights)
    if total <= 0 or end <= start:
        return []
    scale = (end - start) / total
    intervals = []
    position = start
    for symbol, weight in zip(symbols, weights, strict=True):
        following = position + weight * scale
        if is_phoneme(symbol):
            intervals.append(Interval(position, following))
        position = following
    return intervals


def _symbol_weight(symbol: str) -> float:
    if is_phoneme(symbol):
        return 1.0
    return _SYMBOL_WEIGHTS.get(symbol, 0.0)


def time_words(
    words: Sequence[str], weights: Sequence[int], intervals: Sequence[Interval]
) -> list[TimedWord]:
    """Map words onto phoneme intervals in proportion to their phoneme counts.

    The map from "phoneme position" to time is piecewise linear over the intervals, so the
    result is monotonic and every word lies within the first interval's start and the last
    interval's end, even when the weights and the intervals disagree on the phoneme count.
    """
    if not words or not intervals:
        return []
    weights = [max(1, w) for w in weights]
    total = sum(weights)
    count = len(intervals)

    def at(position: float, *, ending: bool) -> float:
        # position in [0, count]: how many phonemes have been spoken.  At a whole number a
        # word ends where the previous phoneme ends and starts where the next one starts,
        # so the pause between them belongs to neither.
        whole = math.ceil(position) - 1 if ending else math.floor(position)
        index = min(count - 1, max(0, whole))
        frac = min(1.0, max(0.0, position - index))
        iv = intervals[index]
        return iv.start + frac * (iv.end - iv.start)

    timed = []
    done = 0
    for word, weight in zip(words, weights, strict=True):
        start = at(done / total * count, ending=False)
        done += weight
        end = at(done / total * count, ending=True)
        timed.append(TimedWord(word, start, max(start, end)))
    return timed
