"""Map a server's word timings back onto the exact text that was sent, sans-I/O.

The transcript a user sees is rebuilt from these pieces, so concatenated they must equal
the sentence as written: spaces and punctuation stay attached to the word they follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from knowlithic_protocol import WordTiming


@dataclass(frozen=True)
class TimedText:
    text: str
    start: float
    end: float


def align_words(text: str, words: Sequence[WordTiming], *, offset: float) -> list[TimedText]:
    """Split ``text`` into pieces, one per timed word found in it, shifted by ``offset``.

    Each piece runs from the end of the previous word through the end of its own word; the
    text after the last word joins the last piece.  Words the text does not contain (the
    server spelled "$5" as "five dollars") give no piece of their own: their time goes to
    the piece that holds the text they were spoken for, so the text is never altered.
    """
    if not words:
        return []
    pieces: list[TimedText] = []
    cursor = 0
    for timing in words:
        found = text.find(timing.word, cursor) if timing.word.strip() else -1
        if found == -1:
            continue
        end = found + len(timing.word)
        pieces.append(TimedText(text[cursor:end], offset + timing.start, offset + timing.end))
        cursor = end
    last_end = offset + max(w.end for w in words)
    if not pieces:
        return [TimedText(text, offset + words[0].start, last_end)]
    last = pieces[-1]
    pieces[-1] = TimedText(last.text + text[cursor:], last.start, max(last.end, last_end))
    return pieces
