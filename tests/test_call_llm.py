"""bench.call.scripted_llm.CallLLM: matching heard speech to the script, pacing, cancelling."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from livekit.agents import llm

from bench.call.script import CallScript, load_script
from bench.call.scripted_llm import FALLBACK_REPLY, CallLLM, similarity

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "call" / "scripts" / "ankle.json"


@pytest.fixture(scope="module")
def script() -> CallScript:
    return load_script(SCRIPT)


def context(*messages: tuple[str, str]) -> llm.ChatContext:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="You are Avery, a nurse on the phone.")
    for role, text in messages:
        ctx.add_message(role=role, content=text)  # type: ignore[arg-type]
    return ctx


async def reply_to(model: CallLLM, ctx: llm.ChatContext) -> str:
    return (await model.chat(chat_ctx=ctx).collect()).text


async def test_greets_before_the_caller_says_anything(script: CallScript) -> None:
    model = CallLLM(script)
    assert await reply_to(model, context()) == script.greeting
    [choice] = model.choices
    assert (choice.kind, choice.transcript, choice.turn) == ("greeting", None, None)


async def test_exact_line_gets_its_reply(script: CallScript) -> None:
    model = CallLLM(script)
    ctx = context(("assistant", script.greeting), ("user", "Should I take something for the pain?"))
    assert await reply_to(model, ctx) == script.turns[2].reply
    assert model.choices[0].turn == 2
    assert model.choices[0].score == 1.0


async def test_answers_the_last_user_message(script: CallScript) -> None:
    model = CallLLM(script)
    ctx = context(
        ("assistant", script.greeting),
        ("user", "I think I sprained my ankle this morning."),
        ("assistant", script.turns[0].reply),
        ("user", "can i go to work tomorrow"),
    )
    assert await reply_to(model, ctx) == script.turns[3].reply


@pytest.mark.parametrize(
    ("heard", "turn"),
    [
        ("i think i spring my angle this mourning", 0),  # the recognizer's slips
        ("it hurts a lot but i can walk a little", 1),  # the mid-sentence pause joined
        ("it hurts a lot", 1),  # committed early, at the pause
        ("should i take some thing for the paint", 2),
        ("thank you", 4),
    ],
)
async def test_misheard_line_still_matches(script: CallScript, heard: str, turn: int) -> None:
    model = CallLLM(script)
    ctx = context(("assistant", script.greeting), ("user", heard))
    assert await reply_to(model, ctx) == script.turns[turn].reply


async def test_a_turn_committed_in_pieces_is_matched_whole(script: CallScript) -> None:
    model = CallLLM(script)
    ctx = context(
        ("assistant", script.greeting),
        ("user", "it hurts a lot"),
        ("user", "but i can walk a little"),
    )
    assert await reply_to(model, ctx) == script.turns[1].reply
    assert model.choices[0].transcript == "it hurts a lot but i can walk a little"


@pytest.mark.parametrize("heard", ["hello hello", "", "what is the weather like in paris"])
async def test_unrelated_speech_gets_the_fallback(script: CallScript, heard: str) -> None:
    model = CallLLM(script)
    ctx = context(("assistant", script.greeting), ("user", heard))
    assert await reply_to(model, ctx) == FALLBACK_REPLY
    [choice] = model.choices
    assert (choice.kind, choice.turn, choice.transcript) == ("fallback", None, heard)
    assert choice.score < model.threshold


def test_similarity() -> None:
    assert similarity(["a", "b"], ["a", "b"]) == 1.0
    assert similarity(["a", "a"], ["a", "b"]) == 0.5  # a word counts as often as it is said
    assert similarity([], ["a"]) == 0.0


async def test_ttft_and_token_rate_are_honoured(script: CallScript) -> None:
    model = CallLLM(script, ttft=0.3, tokens_per_second=50.0)
    arrivals: list[float] = []
    stream = model.chat(chat_ctx=context())
    async with stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                arrivals.append(time.monotonic())
    [choice] = model.choices
    words = script.greeting.split()
    assert len(arrivals) == len(words)
    assert choice.first_token_at is not None and choice.finished_at is not None
    assert 0.28 <= choice.first_token_at - choice.requested_at <= 0.4
    assert 0.28 <= arrivals[0] - choice.requested_at <= 0.4
    spread = arrivals[-1] - arrivals[0]
    expected = (len(words) - 1) / 50.0
    assert expected - 0.02 <= spread <= expected + 0.1
    assert not choice.cancelled


async def test_settings_are_checked(script: CallScript) -> None:
    model = CallLLM(script)
    with pytest.raises(ValueError, match="ttft"):
        model.ttft = -1.0
    with pytest.raises(ValueError, match="tokens_per_second"):
        model.tokens_per_second = 0.0


async def test_cancelling_stops_the_stream_promptly(script: CallScript) -> None:
    model = CallLLM(script, ttft=0.05, tokens_per_second=5.0)  # ~3 s for the greeting
    stream = model.chat(chat_ctx=context())
    first = await stream.__anext__()
    assert first.delta is not None and first.delta.content
    started = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - started < 0.1
    [choice] = model.choices
    assert choice.cancelled and choice.finished_at is None
    assert choice.first_token_at is not None


async def test_discarded_requests_are_recorded(script: CallScript) -> None:
    """Preemptive generation: a request the framework drops before its first token."""
    model = CallLLM(script, ttft=1.0)
    early = model.chat(chat_ctx=context(("user", "it hurts a lot")))
    await asyncio.sleep(0.05)
    await early.aclose()
    model.ttft = 0.0
    full = context(("user", "it hurts a lot but i can walk a little"))
    assert await reply_to(model, full) == script.turns[1].reply
    assert [c.cancelled for c in model.choices] == [True, False]
    assert model.choices[0].first_token_at is None
    assert model.choices[0].requested_at < model.choices[1].requested_at
