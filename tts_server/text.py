"""Split a request's text into the segments that are synthesized one at a time.

A segment is a sentence, except that a long first sentence gives up its first clause as a
segment of its own (at a comma, semicolon, colon or dash): the first clause is synthesized in
a few tens of milliseconds, so the first audio goes out long before the whole first sentence
could have been synthesized.  Long sentences are cut at clause marks (else at spaces): a
segment holds a worker thread until it is done, so short segments keep the wait of other
requests' first audio short under load.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Final

# A first sentence of at most this many words is synthesized whole: it is fast anyway, and
# splitting it would cost prosody for no gain.
FIRST_CLAUSE_MIN_SENTENCE_WORDS: Final = 7
FIRST_CLAUSE_MIN_REST_WORDS: Final = 3
MAX_SEGMENT_CHARS: Final = 160

# Only words that are rarely the last word of a sentence: a missed sentence end costs a little
# latency, a false one costs a pause in the middle of a sentence.
_ABBREVIATIONS: Final = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "cf"}
    | {"approx", "dept", "inc", "ltd", "corp", "jan", "feb", "apr", "jun", "jul", "aug", "sep"}
    | {"sept", "oct", "nov", "dec", "tue", "thu", "fri"}
)
_SENTENCE_END: Final = re.compile(r"[.!?…。！？]+[\"'”’)\]]*(?=\s|$)")
_CLAUSE_MARK: Final = re.compile(r"(?:[,;:](?=\s)|\s[—–-]+(?=\s))")
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
    """Normalize the text Piper sees: no control characters, no raw-phoneme ``[[ ]]`` blocks."""
    text = unicodedata.normalize("NFC", text)
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


def split_segments(text: str) -> list[Segment]:
    """The segments of a request, in order; the last has ``Boundary.END``."""
    segments: list[Segment] = []
    for index, sentence in enumerate(split_sentences(clean(text))):
        pieces = _split_long(sentence)
        if index == 0:
            pieces = _split_first_clause(pieces[0]) + pieces[1:]
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


def _split_long(sentence: str) -> list[str]:
    """Cut a sentence longer than MAX_SEGMENT_CHARS at clause marks, else at spaces."""
    if len(sentence) <= MAX_SEGMENT_CHARS:
        return [sentence]
    pieces: list[str] = []
    rest = sentence
    while len(rest) > MAX_SEGMENT_CHARS:
        window = rest[: MAX_SEGMENT_CHARS + 1]
        cut = max((m.end() for m in _CLAUSE_MARK.finditer(window)), default=-1)
        if cut < MAX_SEGMENT_CHARS // 3:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = MAX_SEGMENT_CHARS
        head, rest = rest[:cut].strip(), rest[cut:].strip()
        if _speakable(head):
            pieces.append(head)
    if _speakable(rest):
        pieces.append(rest)
    return pieces or [sentence]
