"""What a fault on the primary LLM model adds to a turn, once the chain moves to the next one.

    python -m bench.llm_fallback                      # 20 turns a fault, 3 for the stalls
    python -m bench.llm_fallback --turns 5 --stall-turns 1

Each turn goes through ``agent.build_llm(settings)`` (the worker's chain, the real groq
plugin) to tests/fake_openai.py, a local OpenAI-compatible server process, with the primary
model failing one way and the next one answering.  A fresh chain serves each turn, so every
turn starts with the primary thought healthy, as the first turn after an outage does.
Reported: the first text the caller gets and the whole reply, median and p95, and what the
fault adds to the median first text.  The server streams a word every 5 ms, so the figures
are the chain's and the faults' cost, not a real model's speed.

A second table prices the chain's one cost without a fault: it passes text on a sentence at
a time, and the TTS plugin's sentence tokenizer (blingfire, its default) gives a sentence to
the TTS once the next one begins.  It times the first sentence out of that tokenizer with
the chain and with the bare plugin, on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from livekit.agents import llm, tokenize
from livekit.plugins import groq

from agent import build_llm
from bench.common import machine, percentiles, table
from settings import DEFAULT_GROQ_ATTEMPT_TIMEOUT, Settings, load_settings
from tests.fake_openai import FakeOpenAI, reply_for

FAULTS = {
    "none": None,
    "429": "429",
    "503": "503",
    "cut after a sentence": "cut:6",
    "stall before the first byte": "stall",
    "stall after a sentence": "stall_mid:6",
}
STALLS = {"stall", "stall_mid:6"}


def _settings(server: FakeOpenAI, timeout: float) -> Settings:
    env = {
        "DEEPGRAM_API_KEY": "dg-unused",
        "GROQ_API_KEY": "gsk-unused",
        "GROQ_BASE_URL": server.base_url,
        "GROQ_MODEL": "primary",
        "GROQ_FALLBACK_MODELS": "second",
        "GROQ_ATTEMPT_TIMEOUT": str(timeout),
    }
    return load_settings(env, require_livekit=False)


async def one_turn(server: FakeOpenAI, fault: str | None, timeout: float) -> tuple[float, float]:
    """Seconds to the first text and to the whole reply."""
    chain = build_llm(_settings(server, timeout))
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="My head hurts.")
    if fault:
        await server.fail("primary", fault)
    try:
        started = time.perf_counter()
        first = 0.0
        text = ""
        async with chain.chat(chat_ctx=ctx) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    first = first or time.perf_counter() - started
                    text += chunk.delta.content
        whole = time.perf_counter() - started
    finally:
        await chain.aclose()
    assert text.endswith(reply_for("second" if fault else "primary")), "reply lost"
    return first, whole


async def first_sentence(model: llm.LLM[Any]) -> float:
    """Seconds until the TTS plugin's sentence tokenizer gives out the reply's first sentence."""
    sentences = tokenize.blingfire.SentenceTokenizer().stream()
    ctx = llm.ChatContext()
    ctx.add_message(role="user", content="My head hurts.")
    started = time.perf_counter()

    async def first() -> float:
        async for _ in sentences:
            return time.perf_counter() - started
        raise AssertionError("no sentence")

    reader = asyncio.create_task(first())
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                sentences.push_text(chunk.delta.content)
    sentences.end_input()
    seconds = await reader
    await sentences.aclose()
    return seconds


async def sentence_cost(server: FakeOpenAI, turns: int, timeout: float) -> list[list[object]]:
    rows: list[list[object]] = []
    for name in ("bare plugin", "chain"):
        times = []
        for _ in range(turns):
            model: llm.LLM[Any] = (
                groq.LLM(model="primary", api_key="gsk-unused", base_url=server.base_url)
                if name == "bare plugin"
                else build_llm(_settings(server, timeout))
            )
            try:
                times.append(await first_sentence(model) * 1000)
            finally:
                await model.aclose()
        rows.append([name, turns, *percentiles(times, (50, 95))])
    return rows


async def run(turns: int, stall_turns: int, timeout: float) -> None:
    # a switch a turn is the point here: no warning for each (restored after: the smoke test
    # runs this in the test process)
    quiet = [logging.getLogger(name) for name in ("agent.llm", "livekit.agents")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        await _run(turns, stall_turns, timeout)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


async def _run(turns: int, stall_turns: int, timeout: float) -> None:
    server = FakeOpenAI()
    await server.start()
    rows: list[list[object]] = []
    baseline = 0.0
    try:
        await one_turn(server, None, timeout)  # warm up: imports, the server's first request
        for name, fault in FAULTS.items():
            count = stall_turns if fault in STALLS else turns
            firsts, wholes = [], []
            for _ in range(count):
                first, whole = await one_turn(server, fault, timeout)
                firsts.append(first * 1000)
                wholes.append(whole * 1000)
            (f50, f95), (w50, w95) = percentiles(firsts, (50, 95)), percentiles(wholes, (50, 95))
            baseline = baseline or f50
            rows.append([name, count, f50, f95, w50, w95, f50 - baseline])
        sentence_rows = await sentence_cost(server, turns, timeout)
    finally:
        await server.stop()
    print(f"LLM fallback, GROQ_ATTEMPT_TIMEOUT={timeout:g} s; {machine()}")
    headers = [
        "fault on the primary",
        "turns",
        "first text p50 ms",
        "p95",
        "whole reply p50 ms",
        "p95",
        "added to first text ms",
    ]
    print(table(headers, rows))
    print("\nNo fault: the first sentence out of the TTS plugin's sentence tokenizer")
    print(table(["LLM", "turns", "first sentence p50 ms", "p95"], sentence_rows))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20, help="turns for each quick fault")
    parser.add_argument("--stall-turns", type=int, default=3, help="turns for each stall")
    parser.add_argument("--attempt-timeout", type=float, default=DEFAULT_GROQ_ATTEMPT_TIMEOUT)
    args = parser.parse_args(argv)
    asyncio.run(run(args.turns, args.stall_turns, args.attempt_timeout))


if __name__ == "__main__":
    main()
