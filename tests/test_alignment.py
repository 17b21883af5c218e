from __future__ import annotations

from knowlithic_protocol import WordTiming as W
from tts_custom.alignment import TimedText, align_words


def test_pieces_rebuild_the_text_exactly() -> None:
    text = "Hello, world! How are you?"
    words = [
        W("Hello", 0, 0.3),
        W("world", 0.4, 0.7),
        W("How", 0.9, 1.0),
        W("are", 1.0, 1.1),
        W("you", 1.1, 1.3),
    ]
    pieces = align_words(text, words, offset=2.0)
    assert "".join(p.text for p in pieces) == text
    assert pieces[0] == TimedText("Hello", 2.0, 2.3)
    assert pieces[-1] == TimedText(" you?", 3.1, 3.3)


def test_words_the_text_lacks_keep_the_text_unchanged() -> None:
    text = "It costs $5 today."
    words = [
        W("It", 0, 0.1),
        W("costs", 0.1, 0.4),
        W("five", 0.4, 0.6),
        W("dollars", 0.6, 0.9),
        W("today", 0.9, 1.2),
    ]
    pieces = align_words(text, words, offset=0)
    assert "".join(p.text for p in pieces) == text
    assert pieces[-1].text == " $5 today."


def test_no_match_at_all_gives_one_piece() -> None:
    pieces = align_words("¿Qué?", [W("que", 0.0, 0.4)], offset=1.0)
    assert pieces == [TimedText("¿Qué?", 1.0, 1.4)]


def test_no_words_gives_nothing() -> None:
    assert align_words("text", [], offset=0) == []
