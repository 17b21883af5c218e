"""A scripted ``llm.LLM`` for text-mode agent tests: no network, no API key.

Each ``chat()`` call answers with the next scripted reply, streamed word by word like a real
provider, and records the chat context it was given so a test can check what the model saw
(system instructions, user turns).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from livekit.agents import APIConnectOptions, llm, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr


class ScriptedLLM(llm.LLM[None]):
    def __init__(self, replies: Sequence[str]) -> None:
        super().__init__()
        self._replies = list(replies)
        self.chat_contexts: list[llm.ChatContext] = []
        """A copy of the context of every ``chat()`` call, in order."""

    @property
    def model(self) -> str:
        return "scripted"

    @property
    def provider(self) -> str:
        return "tests"

    @property
    def remaining(self) -> int:
        """Replies not yet used."""
        return len(self._replies)

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> ScriptedLLMStream:
        if not self._replies:
            raise AssertionError("ScriptedLLM ran out of replies: the agent asked for more turns")
        self.chat_contexts.append(chat_ctx.copy())
        return ScriptedLLMStream(
            self,
            reply=self._replies.pop(0),
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
        )


class ScriptedLLMStream(llm.LLMStream):
    def __init__(
        self,
        llm_: ScriptedLLM,
        *,
        reply: str,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(llm_, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._reply = reply

    async def _run(self) -> None:
        request_id = utils.shortuuid("scripted-")
        pieces = re.findall(r"\S+\s*", self._reply)
        for piece in pieces:
            delta = llm.ChoiceDelta(role="assistant", content=piece)
            self._event_ch.send_nowait(llm.ChatChunk(id=request_id, delta=delta))
        usage = llm.CompletionUsage(
            completion_tokens=len(pieces), prompt_tokens=0, total_tokens=len(pieces)
        )
        self._event_ch.send_nowait(llm.ChatChunk(id=request_id, usage=usage))
