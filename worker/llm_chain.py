"""The worker's LLM: a chain of models, each taking the turn when the one before fails.

A 429, a 5xx, a stall or a stream cut short moves the turn to the next model, and the caller
hears one reply.  livekit-agents' ``llm.FallbackAdapter`` keeps the list, the models'
availability, metrics and spans; this module adds what it lacks (docs/reliability.md, "LLM
provider faults"):

- a stall bound between chunks, not only before the first byte: a server that sends SSE
  comments or nothing at all mid-stream is given up after ``attempt_timeout``;
- a cut after text went out neither repeats it nor leaves a sentence unfinished: text goes
  out a whole sentence at a time, and the next model is asked to go on after those sentences
  (the adapter either ends the reply mid-sentence or starts it again from the top);
- recovery probed in the background with a one-token request that carries none of the
  caller's words, backing off while the model keeps failing (the adapter re-sends the
  conversation);
- one warning per switch naming the model and the reason class, never text or key (the
  adapter logs the text already sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Final, Literal

from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    llm,
)
from livekit.agents.llm import AvailabilityChangedEvent, FallbackAdapter
from livekit.agents.llm.fallback_adapter import (
    DEFAULT_FALLBACK_API_CONNECT_OPTIONS,
    FallbackLLMStream,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.plugins import groq

logger = logging.getLogger("agent.llm")

Reason = Literal["429", "5xx", "4xx", "timeout", "cut", "connection"]

# Where text may go out: after a sentence's closing punctuation (and any closing quote or
# bracket) and the space that follows it; Chinese and Japanese put no space after theirs.
# Text after the last such place waits.
_SENTENCE_END: Final = re.compile(r"[.!?…][\"'”’)\]]*\s+|[。！？][」』”’）]*\s*")
# Told to the next model when a reply was cut after some sentences went out.
CONTINUE_INSTRUCTIONS: Final = (
    "Your reply above was cut off by a technical fault; the caller heard it up to there. "
    "Continue it from exactly where it stopped. Do not repeat anything already said and do "
    "not mention the interruption."
)
# The recovery probe: a one-token request with none of the caller's words in it.
_PROBE_MAX_TOKENS: Final = 1
# Seconds before each probe of a failed model; the last repeats until it answers.
PROBE_DELAYS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def build_chain(
    models: Sequence[str],
    *,
    api_key: str,
    base_url: str | None,
    attempt_timeout: float,
) -> ModelChain:
    """Groq models (or any OpenAI-compatible server's at ``base_url``), tried in order."""
    # groq.LLM's own default base URL is Groq's; NOT_GIVEN would mean OpenAI's.
    where: dict[str, Any] = {"base_url": base_url} if base_url else {}
    return ModelChain(
        [groq.LLM(model=m, api_key=api_key, **where) for m in models],
        attempt_timeout=attempt_timeout,
    )


class ModelChain(FallbackAdapter):
    """``llm.FallbackAdapter`` whose streams survive stalls and cuts (see the module doc)."""

    def __init__(
        self,
        models: list[llm.LLM[Any]],
        *,
        attempt_timeout: float,
        probe_delays: Sequence[float] = PROBE_DELAYS,
    ) -> None:
        # The chain moves on instead of retrying: a retry would keep the caller waiting on
        # the model that just failed.
        super().__init__(models, attempt_timeout=attempt_timeout, max_retry_per_llm=0)
        self._probe_delays = tuple(probe_delays)

    @property
    def models(self) -> list[str]:
        return [m.model for m in self._llm_instances]

    def available(self, model: str) -> bool:
        return self._status[self.models.index(model)].available

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> ChainStream:
        return ChainStream(
            self,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
            parallel_tool_calls=parallel_tool_calls,
            tool_choice=tool_choice,
            extra_kwargs=extra_kwargs,
        )

    async def aclose(self) -> None:
        for status in self._status:
            if status.recovering_task is not None:
                status.recovering_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await status.recovering_task
        await super().aclose()
        for instance in self._llm_instances:
            await instance.aclose()

    def _order(self) -> list[int]:
        """The available models in order; all of them when none is, rather than no reply."""
        order = [i for i, s in enumerate(self._status) if s.available]
        return order or list(range(len(self._llm_instances)))

    def _attempt_options(self) -> APIConnectOptions:
        # The plugin gives httpx this timeout for each read, so a silent socket fails there
        # too; max_retry=0: moving on is the retry.
        return APIConnectOptions(max_retry=0, timeout=self._attempt_timeout)

    def _failed(self, index: int) -> None:
        status = self._status[index]
        if status.available:
            status.available = False
            self.emit(
                "llm_availability_changed",
                AvailabilityChangedEvent(llm=self._llm_instances[index], available=False),
            )
        if status.recovering_task is None or status.recovering_task.done():
            status.recovering_task = asyncio.create_task(
                self._probe(index), name=f"llm_probe_{self._llm_instances[index].model}"
            )

    def _answered(self, index: int) -> None:
        """A model marked down answered a turn (all were down, so it was asked anyway)."""
        status = self._status[index]
        if not status.available:
            if status.recovering_task is not None:
                status.recovering_task.cancel()
            self._back(index)

    def _back(self, index: int) -> None:
        model = self._llm_instances[index]
        self._status[index].available = True
        logger.info("LLM model %s answers again; turns go to it again", model.model)
        self.emit("llm_availability_changed", AvailabilityChangedEvent(llm=model, available=True))

    async def _probe(self, index: int) -> None:
        model = self._llm_instances[index]
        for delay in _delays(self._probe_delays):
            await asyncio.sleep(delay)
            probe = llm.ChatContext()
            probe.add_message(role="user", content="Say OK.")
            try:
                async with model.chat(
                    chat_ctx=probe,
                    conn_options=self._attempt_options(),
                    extra_kwargs={"max_completion_tokens": _PROBE_MAX_TOKENS},
                ) as stream:
                    async for _ in within(stream, self._attempt_timeout):
                        pass
            except APIError as e:
                logger.debug("LLM model %s still failing (%s)", model.model, reason_of(e, False))
                continue
            except Exception as e:  # a probe that dies would leave the model down for good
                logger.debug("LLM model %s probe failed (%s)", model.model, type(e).__name__)
                continue
            self._back(index)
            return


class ChainStream(FallbackLLMStream):
    """One reply: the models in turn, text out a sentence at a time (see the module doc)."""

    def __init__(self, chain: ModelChain, **kwargs: Any) -> None:
        super().__init__(chain, **kwargs)
        self._chain = chain

    async def _run(self) -> None:
        chain = self._chain
        spoken = ""  # text given to the caller, whole sentences only
        failures: list[str] = []
        order = chain._order()
        for position, index in enumerate(order):
            model = chain._llm_instances[index]
            attempt = _Attempt(self, spoken)
            try:
                await attempt.run(model)
            except APIError as e:
                reason = reason_of(e, attempt.received)
                spoken = attempt.spoken
                failures.append(f"{model.model} ({reason})")
                chain._failed(index)
                if attempt.tool_called:
                    # A tool may already be running: asking again could run it twice.
                    logger.warning(
                        "LLM model %s failed (%s) after calling a tool; the reply ends",
                        model.model,
                        reason,
                    )
                    raise APIConnectionError(
                        f"LLM model {model.model} failed ({reason}) after calling a tool",
                        retryable=False,
                    ) from None
                following = order[position + 1] if position + 1 < len(order) else None
                logger.warning(
                    "LLM model %s failed (%s); %s",
                    model.model,
                    reason,
                    "no model left"
                    if following is None
                    else f"the turn moves to {chain._llm_instances[following].model}"
                    + (" after the sentences already said" if spoken else ""),
                )
            else:
                chain._answered(index)
                return
        # Not retryable: the framework would start the reply again from the top.
        raise APIConnectionError(
            f"every LLM model failed: {', '.join(failures)}", retryable=False
        ) from None


class _Attempt:
    """One model's try at a reply, after ``spoken`` (the sentences already given)."""

    def __init__(self, stream: ChainStream, spoken: str) -> None:
        self._stream = stream
        self.spoken = spoken
        self.received = False  # any chunk from this model: a failure now is a cut
        self.tool_called = False

    async def run(self, model: llm.LLM[Any]) -> None:
        outer = self._stream
        chat_ctx = outer._chat_ctx
        if self.spoken:
            chat_ctx = chat_ctx.copy()
            chat_ctx.add_message(role="assistant", content=self.spoken.strip())
            chat_ctx.add_message(role="system", content=CONTINUE_INSTRUCTIONS)
        held = ""  # this model's sentence in progress: it goes out once it ends
        last_id = ""
        async with model.chat(
            chat_ctx=chat_ctx,
            tools=outer._tools,
            conn_options=outer._chain._attempt_options(),
            parallel_tool_calls=outer._parallel_tool_calls,
            tool_choice=outer._tool_choice,
            extra_kwargs=outer._extra_kwargs,
        ) as inner:
            async for chunk in within(inner, outer._chain._attempt_timeout):
                self.received = True
                last_id = chunk.id
                delta = chunk.delta
                if delta is None or not (delta.content or delta.tool_calls):
                    outer._event_ch.send_nowait(chunk)  # usage, provider metadata
                    continue
                held += delta.content or ""
                if delta.tool_calls:
                    ready, held = held, ""
                    self.tool_called = True
                else:
                    ready, held = split_sentences(held)
                    if not ready:
                        continue
                self._give(chunk, ready)
                outer._current_stream = inner
        if held:
            self._give(llm.ChatChunk(id=last_id, delta=llm.ChoiceDelta(role="assistant")), held)

    def _give(self, chunk: llm.ChatChunk, text: str) -> None:
        assert chunk.delta is not None
        if self.spoken and text and not self.spoken[-1].isspace() and not text[0].isspace():
            text = " " + text  # the next model starts a sentence without the space before it
        self.spoken += text
        delta = chunk.delta.model_copy(update={"content": text or None})
        self._stream._event_ch.send_nowait(chunk.model_copy(update={"delta": delta}))


def split_sentences(text: str) -> tuple[str, str]:
    """``(whole sentences, the rest)``: the text up to its last sentence end, and after."""
    end = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
    return text[:end], text[end:]


async def within(stream: llm.LLMStream, timeout: float) -> AsyncIterator[llm.ChatChunk]:
    """The stream's chunks, failing with APITimeoutError when one takes over ``timeout``.

    httpx's read timeout alone misses a server that keeps the socket busy (SSE comments, a
    proxy's keep-alives) without sending a chunk; this bounds the wait for the next chunk.
    """
    chunks = aiter(stream)
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise APITimeoutError(f"no chunk in {timeout:g} s", retryable=False) from None
        yield chunk


def reason_of(error: APIError, received: bool) -> Reason:
    """The class of a failure, for the log: never its message, which may quote the server."""
    if isinstance(error, APIStatusError):
        if error.status_code == 429:
            return "429"
        if error.status_code >= 500:
            return "5xx"
        if error.status_code >= 400:
            return "4xx"
    if isinstance(error, APITimeoutError):
        return "timeout"
    # The connection closed or broke: after some of the reply, the stream was cut short.
    return "cut" if received else "connection"


def _delays(delays: Sequence[float]) -> Iterator[float]:
    yield from delays
    while True:
        yield delays[-1]
