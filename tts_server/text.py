"""Split a request's text into the segments that are synthesized one at a time.

A segment is a sentence, except that a long first sentence gives up its first clause as a
segment of its own (at a comma, semicolon, colon or dash): the first clause is synthesized in
a few tens of milliseconds, so the first audio goes out long before the whole first sentence
could have been synthesized.  Long sentences are cut at clause marks (else at spaces): a
segment holds a worker thread until it is done, so short segments keep the wait of other
requests' first audio short under load.  Letters of scripts the voice cannot read are
spelled out by espeak ("Chinese letter, Chinese letter"), at 10-25 times the synthesis time
of a Latin letter (Cyrillic to Chinese), so they count sixteen times in a segment's size.
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Final

from .markup import strip_markup

# A first sentence of at most this many words is synthesized whole: it is fast anyway, and
# splitting it would cost prosody for no gain.
FIRST_CLAUSE_MIN_SENTENCE_WORDS: Final = 7
FIRST_CLAUSE_MIN_REST_WORDS: Final = 3
MAX_SEGMENT_CHARS: Final = 160
# What one letter the voice can only spell out costs, in Latin characters.
SPELLED_LETTER_COST: Final = 16
# A request's first segment of spelled-out letters is kept to a few, for a quick first audio.
FIRST_SPELLED_SEGMENT_COST: Final = 4 * SPELLED_LETTER_COST

# Only words that are rarely the last word of a sentence: a missed sentence end costs a little
# latency, a false one costs a pause in the middle of a sentence.
_ABBREVIATIONS: Final = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "cf"}
    | {"approx", "dept", "inc", "ltd", "corp", "jan", "feb", "apr", "jun", "jul", "aug", "sep"}
    | {"sept", "oct", "nov", "dec", "tue", "thu", "fri"}
)
# Scripts written without spaces end sentences and clauses without one too.
_SENTENCE_END: Final = re.compile(r"[.!?…।؟]+[\"'”’)\]]*(?=\s|$)|[。！？]+[」』”’)]*")
_CLAUSE_MARK: Final = re.compile(r"(?:[,;:،](?=\s)|\s[—–-]+(?=\s)|[，、；：])")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES: Final = re.compile(r"[ \t\u00a0]+")


class Boundary(Enum):
    """What ends a segment; it decides the pause after it."""

    SENTENCE = "sentence"
    CLAUSE = "clause"
    END = "end"


@dataclass(frozen=True)
class Segment:
    text: str
    boundary: Boundary


def clean(text: str) -> str:
    """Normalize the text Piper sees: no markup, no control characters, no raw phonemes."""
    text = strip_markup(unicodedata.normalize("NFC", text))
    text = _CONTROL.sub(" ", text)
    # Piper reads [[ ... ]] as raw phonemes; a client sends text, never phonemes.
    text = text.replace("[[", "[ [").replace("]]", "] ]")
    return text


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (paragraph breaks end a sentence too), whitespace-normalized."""
    sentences: list[str] = []
    for raw in re.split(r"\n\s*\n|\r\n\s*\r\n|\n(?=\s*[-*•])", text):
        paragraph = _SPACES.sub(" ", raw.replace("\r", " ").replace("\n", " ")).strip()
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            if _is_abbreviation(paragraph, match.start(), match.group()):
                continue
            sentence = paragraph[start : match.end()].strip()
            if sentence:
                sentences.append(sentence)
            start = match.end()
        rest = paragraph[start:].strip()
        if rest:
            sentences.append(rest)
    return [s for s in sentences if _speakable(s)]


def split_segments(text: str, *, first_clause: bool = True) -> list[Segment]:
    """The segments of a request, in order; the last has ``Boundary.END``.

    ``first_clause`` splits the first clause of a long first sentence off (for a fast start).
    """
    segments: list[Segment] = []
    for index, sentence in enumerate(split_sentences(clean(text))):
        pieces = _split_long(sentence)
        if index == 0 and first_clause:
            pieces = _split_first_clause(pieces[0]) + pieces[1:]
            if cost(pieces[0]) > len(pieces[0]):  # letters spelled out: start with a few
                pieces = _split_long(pieces[0], FIRST_SPELLED_SEGMENT_COST) + pieces[1:]
        segments.extend(Segment(p, Boundary.CLAUSE) for p in pieces[:-1])
        segments.append(Segment(pieces[-1], Boundary.SENTENCE))
    if segments:
        segments[-1] = Segment(segments[-1].text, Boundary.END)
    return segments


def _is_abbreviation(paragraph: str, end: int, terminator: str) -> bool:
    if not terminator.startswith(".") or len(terminator.rstrip("\"'”’)]")) > 1:
        return False
    word = paragraph[:end].rsplit(" ", 1)[-1].lower().lstrip("\"'“‘([")
    # Initials ("J. Smith", "U.S.") and known abbreviations do not end a sentence.
    return (
        word in _ABBREVIATIONS
        or (len(word.replace(".", "")) == 1 and word.isalpha())
        or ("." in word and all(len(p) <= 1 for p in word.split(".")))
    )


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _spelled(ch: str) -> bool:
    """A letter the (English) voice can only spell out: one of a script other than Latin."""
    return ch.isalpha() and ord(ch) >= 0x250 and not 0x1E00 <= ord(ch) < 0x1F00


def cost(text: str) -> int:
    """A segment's size in Latin characters: what it costs to synthesize and to hear."""
    return len(text) + (SPELLED_LETTER_COST - 1) * sum(map(_spelled, text))


def _words(text: str) -> int:
    return len(text.split())


def _split_first_clause(sentence: str) -> list[str]:
    if _words(sentence) < FIRST_CLAUSE_MIN_SENTENCE_WORDS:
        return [sentence]
    for match in _CLAUSE_MARK.finditer(sentence):
        head, tail = sentence[: match.end()].strip(), sentence[match.end() :].strip()
        if _speakable(head) and _words(tail) >= FIRST_CLAUSE_MIN_REST_WORDS:
            return [head, tail]
    return [sentence]


def _split_long(sentence: str, budget: int = MAX_SEGMENT_CHARS) -> list[str]:
    """Cut a sentence that costs more than ``budget`` at clause marks, else at spaces."""
    # costs[i]: what the first i characters cost; one pass, so that cutting stays linear
    costs = list(
        itertools.accumulate(
            (SPELLED_LETTER_COST if _spelled(ch) else 1 for ch in sentence), initial=0
        )
    )
    end = len(sentence)
    if costs[end] <= budget:
        return [sentence]
    pieces: list[str] = []
    start = 0
    while costs[end] - costs[start] > budget:
        # the characters from start that fit in the budget (at least one)
        size = max(1, bisect.bisect_right(costs, costs[start] + budget) - 1 - start)
        window = sentence[start : start + size + 1]
        # one character more, so that a mark's following space is seen
        marks = _CLAUSE_MARK.finditer(sentence, start, start + size + 2)
        cut = max((m.end() - start for m in marks if m.end() - start <= size + 1), default=-1)
        if cut < size // 3:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = size
        head = sentence[start : start + cut].strip()
        if _speakable(head):
            pieces.append(head)
        start += cut
        while start < end and sentence[start].isspace():
            start += 1
    rest = sentence[start:].strip()
    if _speakable(rest):
        pieces.append(rest)
    return pieces or [sentence]
