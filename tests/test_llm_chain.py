"""The worker's LLM chain against a real OpenAI-compatible server process that fails on demand.

Everything goes through ``agent.build_llm(settings)`` and the real groq plugin, pointed at
tests/fake_openai.py with GROQ_BASE_URL: the faults travel through real sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession, APIConnectionError, llm
from livekit.agents.llm import AvailabilityChangedEvent
from livekit.agents.voice.run_result import RunResult

import agent
from settings import load_settings
from tests.fake_openai import FakeOpenAI, reply_for
from worker.llm_chain import CONTINUE_INSTRUCTIONS, ModelChain, split_sentences

KEY = "gsk_s3cr3t-chain"
USER_TEXT = "My head has hurt since this morning."
ATTEMPT_TIMEOUT = 0.5
# A stall costs ATTEMPT_TIMEOUT per stalled model; this only catches a wait left unbounded.
GENEROUS = 10.0


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


def config(server: FakeOpenAI, **overrides: str) -> Any:
    env = {
        "LIVEKIT_URL": "ws://localhost:7880",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret",
        "DEEPGRAM_API_KEY": "dg-placeholder",
        "GROQ_API_KEY": KEY,
        "GROQ_BASE_URL": server.base_url,
        "GROQ_MODEL": "primary",
        "GROQ_FALLBACK_MODELS": "second,third",
        "GROQ_ATTEMPT_TIMEOUT": str(ATTEMPT_TIMEOUT),
    }
    return load_settings({**env, **overrides})


@pytest.fixture
async def chain(server: FakeOpenAI) -> AsyncIterator[ModelChain]:
    built = agent.build_llm(config(server))
    assert isinstance(built, ModelChain)
    yield built
    await built.aclose()


def conversation() -> llm.ChatContext:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="You are Avery, a nurse on the phone.")
    ctx.add_message(role="user", content=USER_TEXT)
    return ctx


async def reply(model: llm.LLM[Any]) -> tuple[str, float]:
    """The whole reply as the caller gets it, and the seconds it took."""
    started = time.monotonic()
    async with model.chat(chat_ctx=conversation()) as stream:
        text = "".join([c.delta.content async for c in stream if c.delta and c.delta.content])
    return text, time.monotonic() - started


def switches(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "agent.llm" and r.levelno == logging.WARNING
    ]


def assert_logs_hold_no_text_and_no_key(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        if record.levelno < logging.WARNING and record.name != "agent.llm":
            continue  # the framework's debug lines are its own business
        seen = f"{record.getMessage()} {record.__dict__}"
        for secret in (KEY, USER_TEXT, "speaking", "Every word"):
            assert secret not in seen, (record.name, record.getMessage())


async def wait_until_available(chain: ModelChain, model: str, timeout: float = GENEROUS) -> None:
    back = asyncio.Event()

    def on_change(event: AvailabilityChangedEvent) -> None:
        if event.llm.model == model and event.available:
            back.set()

    chain.on("llm_availability_changed", on_change)
    try:
        if not chain.available(model):
            async with asyncio.timeout(timeout):
                await back.wait()
    finally:
        chain.off("llm_availability_changed", on_change)


# --- each fault moves the turn to the next model ------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("429", "429"),
        ("500", "5xx"),
        ("503", "5xx"),
        ("stall", "timeout"),  # accepts, sends nothing
        ("stall_mid:2", "timeout"),  # two words, then silence on an open socket
        ("drip:2", "timeout"),  # two words, then SSE keep-alives with no text
        ("cut:2", "cut"),  # two words, then the TCP connection closes
    ],
)
async def test_a_fault_moves_the_turn_to_the_next_model(
    server: FakeOpenAI,
    chain: ModelChain,
    fault: str,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await server.fail("primary", fault)

    text, seconds = await reply(chain)

    # The caller gets the next model's whole reply and nothing of the failed one's half sentence.
    assert text == reply_for("second")
    asked = [(r["model"], r["fault"]) for r in await server.requests()]
    assert asked[:2] == [("primary", fault), ("second", "ok")]
    assert seconds < GENEROUS  # a stall is bounded by GROQ_ATTEMPT_TIMEOUT
    assert switches(caplog) == [f"LLM model primary failed ({reason}); the turn moves to second"]
    assert_logs_hold_no_text_and_no_key(caplog)


@pytest.mark.parametrize("fault", ["cut:6", "stall_mid:6", "drip:6"])
async def test_a_reply_broken_after_a_sentence_goes_on_without_repeating_it(
    server: FakeOpenAI, chain: ModelChain, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Six words: "This is primary speaking. Every word " -- one sentence and a half.
    await server.fail("primary", fault)

    text, seconds = await reply(chain)

    said = "This is primary speaking. "
    assert text == said + reply_for("second")  # the sentence once; no half sentence
    assert seconds < GENEROUS
    second = next(r for r in await server.requests() if r["model"] == "second")
    # The next model sees what the caller heard, and is asked to go on from there.
    assert second["messages"][-2:] == [
        {"role": "assistant", "content": said.strip()},
        {"role": "system", "content": CONTINUE_INSTRUCTIONS},
    ]
    assert switches(caplog)[0].endswith("the turn moves to second after the sentences already said")
    assert_logs_hold_no_text_and_no_key(caplog)


async def test_faults_on_two_models_move_the_turn_to_the_third(
    server: FakeOpenAI, chain: ModelChain
) -> None:
    await server.fail("primary", "cut:6")
    await server.fail("second", "stall_mid:3")  # "This is second " and no sentence end
    text, _ = await reply(chain)
    assert text == "This is primary speaking. " + reply_for("third")


# --- recovery ------------------------------------------------------------------


async def test_the_recovered_primary_serves_turns_again(
    server: FakeOpenAI, chain: ModelChain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # The turn's 429, then the first probe's (1 s later): the next probe comes 2 s after that,
    # so the second turn below surely finds the primary still down, however slow the machine.
    await server.fail("primary", "429", "429")
    assert (await reply(chain))[0] == reply_for("second")
    # Until a probe finds it answering, turns go straight to the next model: no wait on it.
    assert not chain.available("primary")
    assert (await reply(chain))[0] == reply_for("second")

    await wait_until_available(chain, "primary")
    assert (await reply(chain))[0] == reply_for("primary")

    asked = await server.requests()
    turns = [r["model"] for r in asked if USER_TEXT in str(r["messages"])]
    assert turns == ["primary", "second", "second", "primary"]
    probes = [r for r in asked if USER_TEXT not in str(r["messages"])]
    assert [(p["model"], p["fault"]) for p in probes] == [("primary", "429"), ("primary", "ok")]
    # The probes carried none of the caller's words.
    assert all(p["messages"] == [{"role": "user", "content": "Say OK."}] for p in probes)
    assert any("primary answers again" in r.getMessage() for r in caplog.records)


async def test_a_model_still_failing_is_probed_again_later(
    server: FakeOpenAI, chain: ModelChain
) -> None:
    await server.fail("primary", "503", "503", "503")  # the turn, then two probes
    assert (await reply(chain))[0] == reply_for("second")
    await wait_until_available(chain, "primary")
    asked = [r for r in await server.requests() if r["model"] == "primary"]
    assert [r["fault"] for r in asked] == ["503", "503", "503", "ok"]
    # backing off: the probes come 1 s, then 2 s, then 4 s apart
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(asked[1:])]
    assert gaps[0] < gaps[1]
    assert (await reply(chain))[0] == reply_for("primary")


# --- every model failing ---------------------------------------------------------


async def test_every_model_failing_raises_one_clear_error(
    server: FakeOpenAI, chain: ModelChain, caplog: pytest.LogCaptureFixture
) -> None:
    await server.fail("primary", "500")
    await server.fail("second", "429")
    await server.fail("third", "stall")
    with pytest.raises(APIConnectionError) as info:
        await reply(chain)
    assert "every LLM model failed: primary (5xx), second (429), third (timeout)" in str(info.value)
    # The framework must not start the reply again from the top.
    assert info.value.retryable is False
    assert switches(caplog)[-1] == "LLM model third failed (timeout); no model left"
    assert_logs_hold_no_text_and_no_key(caplog)


async def test_with_no_fallback_a_fault_on_the_only_model_is_the_error(
    server: FakeOpenAI,
) -> None:
    only = agent.build_llm(config(server, GROQ_FALLBACK_MODELS="none"))
    try:
        await server.fail("primary", "429")
        with pytest.raises(APIConnectionError, match=r"failed: primary \(429\)$"):
            await reply(only)
        assert [r["model"] for r in await server.requests()] == ["primary"]
    finally:
        await only.aclose()


async def test_a_server_killed_mid_reply_fails_the_turn_and_serves_the_next_once_back(
    server: FakeOpenAI, chain: ModelChain, caplog: pytest.LogCaptureFixture
) -> None:
    # One server holds every model (GROQ_BASE_URL): when its process dies, none is left.
    await server.fail("primary", "stall_mid:6")
    turn = asyncio.create_task(reply(chain))
    await asyncio.sleep(0.2)  # the first sentence is out, the rest never comes
    await server.stop()  # SIGKILL: the socket vanishes mid-response
    with pytest.raises(APIConnectionError, match="every LLM model failed: primary"):
        await turn
    assert_logs_hold_no_text_and_no_key(caplog)

    await server.restart(down=1.5)  # as a restarted container comes back
    # Every model was marked down; the chain still asks them all rather than give no reply,
    # and the one that answers is up again.
    assert (await reply(chain))[0] == reply_for("primary")
    assert chain.available("primary")


# --- in a session ----------------------------------------------------------------


async def test_the_caller_gets_the_reply_despite_a_429_on_the_primary(
    server: FakeOpenAI, chain: ModelChain
) -> None:
    async with AgentSession[None](llm=chain) as session:
        await session.start(Agent(instructions="You are Avery, a nurse on the phone."))
        await server.fail("primary", "429")
        result: RunResult[None] = await session.run(user_input=USER_TEXT)

    message = result.expect.next_event().is_message(role="assistant")
    assert message.event().item.text_content == reply_for("second")
    result.expect.no_more_events()
    asked = [(r["model"], r["fault"]) for r in await server.requests()]
    assert asked[:2] == [("primary", "429"), ("second", "ok")]


# --- where the models are --------------------------------------------------------


async def test_the_models_are_groq_s_unless_a_base_url_says_otherwise() -> None:
    env = {
        "LIVEKIT_URL": "ws://localhost:7880",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret",
        "DEEPGRAM_API_KEY": "dg-placeholder",
        "GROQ_API_KEY": KEY,
    }
    for overrides, url in [
        ({}, "https://api.groq.com/openai/v1/"),
        ({"GROQ_BASE_URL": "http://vllm.internal:8000/v1"}, "http://vllm.internal:8000/v1/"),
    ]:
        chain = agent.build_llm(load_settings({**env, **overrides}))
        assert isinstance(chain, ModelChain)
        try:
            assert [str(m._client.base_url) for m in chain._llm_instances] == [url] * 3  # type: ignore[attr-defined]
        finally:
            await chain.aclose()


# --- where text may go out ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ready", "held"),
    [
        ("This is", "", "This is"),
        ("This is it.", "", "This is it."),  # the end may be "it.5" or "it. Then": wait
        ("This is it. Then", "This is it. ", "Then"),
        ('He said "stop!" and', 'He said "stop!" ', "and"),
        ("One. Two? Three", "One. Two? ", "Three"),
        ("It costs 3.5 dollars", "", "It costs 3.5 dollars"),
        ("好的。请稍等", "好的。", "请稍等"),
    ],
)
def test_text_goes_out_up_to_the_last_sentence_end(text: str, ready: str, held: str) -> None:
    assert split_sentences(text) == (ready, held)


async def test_in_a_session_a_reply_cut_after_a_sentence_is_one_message_said_once(
    server: FakeOpenAI, chain: ModelChain
) -> None:
    async with AgentSession[None](llm=chain) as session:
        await session.start(Agent(instructions="You are Avery, a nurse on the phone."))
        await server.fail("primary", "cut:6")
        result: RunResult[None] = await session.run(user_input=USER_TEXT)
        history = [(m.role, m.text_content) for m in session.history.messages()]

    expected = "This is primary speaking. " + reply_for("second")
    message = result.expect.next_event().is_message(role="assistant")
    assert message.event().item.text_content == expected
    result.expect.no_more_events()
    # What the next turn's model will see is what the caller heard: each sentence once.
    assert history[-1] == ("assistant", expected)
