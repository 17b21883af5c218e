"""``CallLLM``: the LLM stand-in for a scripted call, answering what the caller was heard to say.

Each request is answered with the scripted reply whose caller line best matches the
recognized transcript, so a recognition slip still gets the right reply, and a turn the
recognizer mangled (or a reply the framework asked for early, on a partial turn) gets
``FALLBACK_REPLY``, which the analysis then sees as a wrong reply.  Replies stream word by
word at a set time to first token and token rate, like a real provider (the approach of
``tests/scripted_llm.py``, with pacing).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from livekit.agents import APIConnectOptions, llm, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from tests.server.asr import normalize

from .script import CallScript

FALLBACK_REPLY: Final = "Sorry, could you say that again?"
MATCH_THRESHOLD: Final = 0.5
"""Least word-overlap similarity (Dice, 0..1) for a transcript to match a caller line: half
the words may be misheard, while an unrelated line shares a function word or two at most."""
DEFAULT_TOKENS_PER_SECOND: Final = 80.0

_PIECE: Final = re.compile(r"\S+\s*")  # a word with the space after it: one streamed token

ChoiceKind = Literal["greeting", "turn", "fallback"]


@dataclass
class Choice:
    """One answer, as it happened: requests the framework discards are recorded too."""

    kind: ChoiceKind
    transcript: str | None
    """The user text matched (None for the greeting: no user message yet)."""
    turn: int | None
    """Index of the matched scripted turn; None for the greeting and the fallback."""
    score: float
    """Similarity of ``transcript`` to the matched (or best, for the fallback) caller line."""
    reply: str
    requested_at: float
    """``time.monotonic()`` when ``chat()`` was called."""
    first_token_at: float | None = None
    finished_at: float | None = None
    """When the last token went out; None if the stream was cancelled first."""
    cancelled: bool = False


def similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """Dice coefficient of two word multisets: 1.0 same words, 0.0 none shared."""
    if not a or not b:
        return 0.0
    shared = sum((Counter(a) & Counter(b)).values())
    return 2.0 * shared / (len(a) + len(b))


class CallLLM(llm.LLM[None]):
    def __init__(
        self,
        script: CallScript,
        *,
        ttft: float = 0.0,
        tokens_per_second: float = DEFAULT_TOKENS_PER_SECOND,
        threshold: float = MATCH_THRESHOLD,
    ) -> None:
        super().__init__()
        self._script = script
        self._lines = [normalize(t.caller_text) for t in script.turns]
        self.ttft = ttft
        self.tokens_per_second = tokens_per_second
        self.threshold = threshold
        self.choices: list[Choice] = []
        """Every answer, in the order requested."""

    @property
    def ttft(self) -> float:
        """Seconds from ``chat()`` to the first token."""
        return self._ttft

    @ttft.setter
    def ttft(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"ttft must be a finite number >= 0, got {seconds}")
        self._ttft = seconds

    @property
    def tokens_per_second(self) -> float:
        return self._tokens_per_second

    @tokens_per_second.setter
    def tokens_per_second(self, rate: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"tokens_per_second must be a finite number > 0, got {rate}")
        self._tokens_per_second = rate

    @property
    def model(self) -> str:
        return "scripted-call"

    @property
    def provider(self) -> str:
        return "bench"

    def answer(self, chat_ctx: llm.ChatContext) -> Choice:
        """What to say to this context (not yet recorded, not timed)."""
        now = time.monotonic()
        messages = chat_ctx.messages()
        users = [m for m in messages if m.role == "user"]
        if not users:
            return Choice("greeting", None, None, 1.0, self._script.greeting, now)
        candidates = [users[-1].text_content or ""]
        # User messages with no reply between them: the framework may have committed one
        # spoken turn in pieces (at the caller's mid-sentence pause), so try them joined too.
        trailing: list[str] = []
        for m in reversed(messages):
            if m.role == "assistant":
                break
            if m.role == "user":
                trailing.insert(0, m.text_content or "")
        if len(trailing) > 1:
            candidates.append(" ".join(trailing))
        best = (-1.0, 0, "")
        for text in candidates:
            words = normalize(text)
            for index, line in enumerate(self._lines):
                score = similarity(words, line)
                if score > best[0]:
                    best = (score, index, text)
        score, index, text = best
        if score < self.threshold:
            return Choice("fallback", text, None, score, FALLBACK_REPLY, now)
        return Choice("turn", text, index, score, self._script.turns[index].reply, now)

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> CallLLMStream:
        choice = self.answer(chat_ctx)
        self.choices.append(choice)
        return CallLLMStream(
            self, choice=choice, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )


class CallLLMStream(llm.LLMStream):
    def __init__(
        self,
        llm_: CallLLM,
        *,
        choice: Choice,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(llm_, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._choice = choice
        # pacing is fixed at request time: a later change to the LLM applies to later requests
        self._ttft = llm_.ttft
        self._interval = 1.0 / llm_.tokens_per_second
        # The framework cancels the task (it may not even have started): mark it either way.
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self._choice.cancelled = True

    async def _run(self) -> None:
        choice = self._choice
        request_id = utils.shortuuid("call-")
        pieces = _PIECE.findall(choice.reply)
        # Deadlines from the request, not from each send: no drift, and the time the task
        # took to start counts toward the time to first token, as a network round trip would.
        for index, piece in enumerate(pieces):
            deadline = choice.requested_at + self._ttft + index * self._interval
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            delta = llm.ChoiceDelta(role="assistant", content=piece)
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=delta))
            if index == 0:
                choice.first_token_at = time.monotonic()
        usage = llm.CompletionUsage(
            completion_tokens=len(pieces), prompt_tokens=0, total_tokens=len(pieces)
        )
        self._event_ch.send_nowait(llm.ChatChunk(id=request_id, usage=usage))
        choice.finished_at = time.monotonic()
