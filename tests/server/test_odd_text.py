"""Text a user's LLM might send: each is spoken, skipped or refused clearly, in bounded time,
and never reaches the log."""

from __future__ import annotations

import json
import logging
import time

import pytest

import knowlithic_protocol as protocol
from tts_server.markup import strip_markup
from tts_server.text import SPELLED_LETTER_COST, split_segments

from .helpers import Connect, Result, StartServer

# Bounds for one request: nothing odd may hang the server.
QUICK = 2.0
SPOKEN = 15.0


def words(result: Result) -> list[str]:
    return [w.word for message in result.words for w in message.words]


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t  ", "😀🎉👍", "...!?", "\u200b\u200d", '<break time="1s"/>', "<speak></speak>"],
)
async def test_nothing_speakable_completes_at_once_without_audio(
    connect: Connect, text: str
) -> None:
    client = await connect()
    started = time.perf_counter()
    result = await client.run(text, timeout=QUICK)
    assert result.completed and not result.audio
    assert time.perf_counter() - started < QUICK


async def test_emoji_among_words_are_skipped_and_the_words_spoken(connect: Connect) -> None:
    client = await connect()
    result = await client.run("Great job 👍 see you soon 🎉", word_timestamps=True, timeout=SPOKEN)
    assert result.completed and len(result.data) > 16000
    assert words(result) == ["Great", "job", "see", "you", "soon"]


async def test_ssml_tags_are_not_spoken_but_their_text_is(connect: Connect) -> None:
    client = await connect()
    ssml = (
        '<speak>Hello <break time="1s"/> there, <emphasis level="strong">friend</emphasis>!</speak>'
    )
    tagged = await client.run(ssml, word_timestamps=True, timeout=SPOKEN)
    plain = await client.run("Hello there, friend!", request_id="plain", timeout=SPOKEN)
    assert tagged.completed and words(tagged) == ["Hello", "there", "friend"]
    # the same speech: no tag names or attributes read out (a second or more of audio)
    assert abs(len(tagged.data) - len(plain.data)) < 0.5 * 32000


def test_markup_is_stripped_and_look_alikes_are_kept() -> None:
    assert strip_markup('<speak>Hi <break time="1s"/> you</speak>').split() == ["Hi", "you"]
    assert strip_markup("<?xml version='1.0'?><!-- note --><p>Tom &amp; Jerry</p>").strip() == (
        "Tom & Jerry"
    )
    assert strip_markup('<say-as interpret-as="characters">ABC</say-as>.').strip() == "ABC."
    for text in ("a < b and c > d", "if a<b and c>d then", "I <3 you", "R&D, AT&T &copy"):
        assert strip_markup(text) == text


async def test_text_over_the_limit_is_refused_clearly(connect: Connect) -> None:
    client = await connect()
    result = await client.run("word " * 2000, timeout=QUICK)  # 10,000 characters
    assert isinstance(result.terminal, protocol.Error)
    assert result.terminal.code == protocol.ERR_TEXT_TOO_LONG and not result.terminal.retryable
    assert "10000" in result.terminal.message and "5000" in result.terminal.message


async def test_ten_thousand_characters_under_a_higher_limit_start_at_once(
    start_server: StartServer, connect: Connect
) -> None:
    client = await connect(target=await start_server(max_text_length=10_000))
    text = "This is a long answer that goes on and on. " * 233  # 10,019 characters
    await client.request(text[:10_000], request_id="long")
    while not client.results["long"].audio:
        client._dispatch(await client.receive(timeout=QUICK))
    result = client.results["long"]
    assert result.first_audio_at is not None and result.first_audio_at - result.sent_at < QUICK
    await client.send(protocol.Cancel("long"))  # minutes of speech: stop it
    await client.until_done("long", timeout=QUICK)
    assert result.terminal == protocol.Complete("long", cancelled=True)


@pytest.mark.parametrize(
    "text",
    [
        "你好，我今天能帮你什么？",
        "مرحبا، كيف يمكنني مساعدتك اليوم؟",
        "नमस्ते, आज मैं आपकी क्या मदद कर सकता हूँ?",
        "Здравствуйте, чем я могу вам помочь сегодня?",
    ],
    ids=["chinese", "arabic", "hindi", "russian"],
)
async def test_other_scripts_through_the_english_voice_end_in_bounded_time(
    connect: Connect, text: str
) -> None:
    # espeak spells out letters it cannot read ("Chinese letter..."): long, odd, never stuck
    client = await connect()
    result = await client.run(text, timeout=SPOKEN)
    assert result.completed and result.audio
    assert result.first_audio_at is not None and result.first_audio_at - result.sent_at < QUICK


def test_spelled_out_letters_make_short_segments() -> None:
    segments = split_segments("你好我今天能帮你什么" * 10)
    assert len(segments[0].text) <= 4  # the first audio does not wait for a long spelling
    assert all(len(s.text) * SPELLED_LETTER_COST <= 160 for s in segments)
    assert "".join(s.text for s in segments) == "你好我今天能帮你什么" * 10


async def test_a_lone_surrogate_is_refused_and_the_connection_goes_on(connect: Connect) -> None:
    client = await connect()
    frame: dict[str, object] = {"type": "text_to_speech", "request_id": "s", "voice": "joe"}
    frame["text"] = "a\ud800b"
    frame["sample_rate"] = 16000
    await client.send_raw(json.dumps(frame))  # "\ud800" escaped: valid JSON, not valid text
    await client.until_done("s", timeout=QUICK)
    refused = client.results["s"].terminal
    assert isinstance(refused, protocol.Error) and refused.code == protocol.ERR_BAD_REQUEST
    await client.send_raw(json.dumps({**frame, "request_id": "\udfff", "text": "Hi."}))
    error = await client.receive(timeout=QUICK)
    assert isinstance(error, protocol.Error) and error.request_id is None
    assert (await client.run("Still here.", request_id="after")).completed


async def test_the_spoken_text_never_reaches_the_log(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    client = await connect()
    texts = ["Zanzibar pelicans juggle umbrellas.", "<speak>Quixotic zebras</speak>", "你好世界"]
    with caplog.at_level(logging.DEBUG):
        for n, text in enumerate(texts):
            await client.run(text, request_id=f"r{n}", timeout=SPOKEN)
    assert caplog.records  # the server did log (at DEBUG) about these requests
    for needle in ("Zanzibar", "pelicans", "Quixotic", "你好"):
        assert needle not in caplog.text
