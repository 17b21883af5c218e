"""Sentence and first-clause splitting."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tts_server.text import MAX_SEGMENT_CHARS, SPELLED_LETTER_COST, Boundary, clean, split_segments


def texts(text: str) -> list[str]:
    return [s.text for s in split_segments(text)]


def test_sentences_split_at_their_ends() -> None:
    assert texts("Hello there. How are you? Fine!") == ["Hello there.", "How are you?", "Fine!"]


def test_first_clause_of_a_long_first_sentence_is_split_off() -> None:
    segments = split_segments("Sure, I can help you with that booking today. Anything else?")
    assert [s.text for s in segments] == [
        "Sure,",
        "I can help you with that booking today.",
        "Anything else?",
    ]
    assert [s.boundary for s in segments] == [Boundary.CLAUSE, Boundary.SENTENCE, Boundary.END]


def test_short_first_sentences_and_later_sentences_keep_their_commas() -> None:
    assert texts("Well, hi there.") == ["Well, hi there."]
    assert texts("Hi. Later, we can talk about all of it again.") == [
        "Hi.",
        "Later, we can talk about all of it again.",
    ]


def test_abbreviations_initials_and_numbers_do_not_end_sentences() -> None:
    assert texts("Mr. Smith paid $3.50 to Dr. J. Doe in the U.S. today. Done.") == [
        "Mr. Smith paid $3.50 to Dr. J. Doe in the U.S. today.",
        "Done.",
    ]


def test_paragraphs_end_sentences_and_whitespace_is_normalized() -> None:
    assert texts("First line\n\nSecond   line\nstill second") == [
        "First line",
        "Second line still second",
    ]


def test_nothing_speakable_gives_no_segments() -> None:
    assert split_segments("") == []
    assert split_segments("  ... !? \n") == []


def test_raw_phoneme_blocks_and_control_characters_are_neutralized() -> None:
    assert "[[" not in clean("say [[ h ə l oʊ ]] now\x00")
    assert "\x00" not in clean("a\x00b")


def test_long_sentences_are_cut_below_the_limit() -> None:
    sentence = " ".join(["word"] * 300) + "."
    segments = split_segments(sentence)
    assert len(segments) > 1
    assert all(len(s.text) <= MAX_SEGMENT_CHARS for s in segments)
    assert " ".join(s.text for s in segments).split() == sentence.split()


words = st.text(alphabet="abcdefghij", min_size=1, max_size=8)
punctuation = st.sampled_from(["", "", "", ",", ".", "!", "?", ";", " -", "..."])
tokens = st.tuples(words, punctuation).map("".join)


@settings(database=None)  # keep the repository free of .hypothesis/
@given(st.lists(tokens, min_size=1, max_size=120))
def test_splitting_keeps_every_word_in_order(parts: list[str]) -> None:
    text = " ".join(parts)
    segments = split_segments(text)
    assert " ".join(s.text for s in segments).split() == text.split()
    assert all(s.text.strip() for s in segments)
    assert all(s.boundary is not Boundary.END for s in segments[:-1])
    assert segments[-1].boundary is Boundary.END


@settings(database=None, max_examples=200)
@given(st.text(max_size=400))
def test_any_text_splits_into_bounded_speakable_segments(text: str) -> None:
    segments = split_segments(text)
    for segment in segments:
        assert any(ch.isalnum() for ch in segment.text)
        spelled = sum(
            ch.isalpha() and ord(ch) >= 0x250 and not 0x1E00 <= ord(ch) < 0x1F00
            for ch in segment.text
        )
        # a clause mark's space may ride along: one character over at most
        assert len(segment.text) + (SPELLED_LETTER_COST - 1) * spelled <= MAX_SEGMENT_CHARS + 1
