"""When no TTS server can speak: apologize without the TTS, wait for one, then go on or end.

The TTS gives up on a reply after its own timeout (KNOWLITHIC_TIMEOUT) and the session hears
a final error.  From then on, this policy:

1. logs the outage once (ERROR) and plays the prepared apology clip, which needs no TTS;
2. stops turning the caller's speech into replies nobody could hear;
3. checks that a server can speak again (a short synthesis on a TTS of its own, so failed
   checks never reach the session as errors), 0.5 s apart at first, doubling up to
   ``probe_interval``, until ``wait`` seconds after the failure;
4. if one speaks: logs it (INFO), listens again and has the agent answer again: the chat
   holds the caller's last words and, marked interrupted, any reply cut short (one never
   started is not there), so the LLM can say what they missed; asking them to repeat
   would make them pay for our fault;
5. if none does: plays the prepared goodbye, closes the session and calls ``on_end`` (the
   worker leaves the room).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

from livekit import rtc
from livekit.agents import AgentSession, APIConnectOptions, APIError
from livekit.agents.tts import TTS, TTSError
from livekit.agents.voice.events import CloseEvent, ErrorEvent

from .clips import Clip, Clips
from .log_filter import quiet_tts_failures

logger = logging.getLogger("agent.tts_outage")

PROBE_TEXT: Final = "Hello."
FIRST_PROBE_GAP: Final = 0.5
RESUME_INSTRUCTIONS: Final = (
    "Your voice failed for a moment: the caller heard your last reply only in part or not at "
    "all, and has been waiting. Thank them for waiting in a few words, then say what they "
    "missed; if there was nothing, ask how you can help."
)


@dataclass(frozen=True)
class OutageOptions:
    wait: float
    """Seconds from the failure until the call gives up and says goodbye."""
    probe_interval: float
    """The longest pause between two checks."""
    probe_timeout: float
    """One check's patience: as long as a reply gets (KNOWLITHIC_TIMEOUT)."""


async def can_speak(tts: TTS[Any], timeout: float) -> bool:
    """Whether ``tts`` returns audio for a short text within ``timeout``: the first audio is
    proof enough, and leaving the stream cancels the rest."""
    options = APIConnectOptions(max_retry=0, timeout=timeout)
    try:
        async with tts.synthesize(PROBE_TEXT, conn_options=options) as stream:
            async for audio in stream:
                if audio.frame.samples_per_channel > 0:
                    return True
    except APIError:
        return False
    return False


def describe(error: BaseException) -> str:
    """One line naming the error (not its causes, which the plugin's message already names);
    the framework's "... for text: <text>" loses the text."""
    message = error.message if isinstance(error, APIError) else str(error)
    message = message.split(" for text:", 1)[0]
    return f"{type(error).__name__}: {' '.join(message.split())}"


class TtsOutagePolicy:
    """Watches one session for a final TTS error and carries the call through the outage."""

    def __init__(
        self,
        session: AgentSession[Any],
        *,
        clips: Clips,
        make_probe_tts: Callable[[], TTS[Any]],
        options: OutageOptions,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._session = session
        self._clips = clips
        self._make_probe_tts = make_probe_tts
        self._opts = options
        self._on_end = on_end
        self._task: asyncio.Task[None] | None = None
        self._ending = False
        self._closed = False
        self.outages = 0
        self.recoveries = 0
        self.ended = False
        """True once the goodbye has played and the session is closed."""

    def attach(self) -> TtsOutagePolicy:
        quiet_tts_failures()
        self._session.on("error", self._on_error)
        self._session.on("close", self._on_close)
        return self

    async def aclose(self) -> None:
        self._session.off("error", self._on_error)
        self._session.off("close", self._on_close)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_done(self) -> None:
        """Until the outage in progress, if any, has ended either way (cancelled included)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    def _on_error(self, event: ErrorEvent) -> None:
        error = event.error
        if not isinstance(error, TTSError) or error.recoverable:
            return
        if self._task is not None or self._ending or self._closed:
            return  # the outage in progress already covers it: no second line, no second clip
        self.outages += 1
        self._task = asyncio.create_task(self._outage(error.error), name="tts_outage")
        self._task.add_done_callback(_log_failure)

    def _on_close(self, _: CloseEvent) -> None:
        # the caller hung up or the job ends: nobody is left to apologize to
        self._closed = True
        if self._task is not None and not self._ending:
            self._task.cancel()

    async def _outage(self, error: BaseException) -> None:
        failed_at = time.monotonic()
        logger.error(
            "no TTS server can speak (%s); the caller hears the apology, and the call waits up "
            "to %g s for a server",
            describe(error),
            self._opts.wait,
        )
        self._listen(False)
        with contextlib.suppress(RuntimeError):  # nothing to interrupt
            await self._session.interrupt(force=True)
        probe_tts = self._make_probe_tts()
        apology = asyncio.create_task(self._play(self._clips.apology))
        try:
            recovered_at = await self._probe_until(probe_tts, failed_at + self._opts.wait)
            await apology  # it plays to its end whatever the checks found
        finally:
            apology.cancel()  # stops waiting for it only: the session owns the speech
            await probe_tts.aclose()
        if recovered_at is not None:
            self.recoveries += 1
            logger.info(
                "a TTS server speaks again %.1f s after the failure; the conversation goes on",
                recovered_at - failed_at,
            )
            self._listen(True)
            self._task = None
            with contextlib.suppress(RuntimeError):  # the session is closing after all
                self._session.generate_reply(instructions=RESUME_INSTRUCTIONS)
            return
        logger.warning(
            "no TTS server spoke again within %g s; the caller hears the goodbye and the call ends",
            self._opts.wait,
        )
        self._ending = True
        await self._play(self._clips.goodbye)
        await self._session.aclose()
        self.ended = True
        if self._on_end is not None:
            self._on_end()

    async def _probe_until(self, tts: TTS[Any], deadline: float) -> float | None:
        """When a check first heard the TTS speak, or None if none did by ``deadline``."""
        gap = FIRST_PROBE_GAP
        while (left := deadline - time.monotonic()) > 0:
            if await can_speak(tts, min(self._opts.probe_timeout, left)):
                return time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(gap, left))
            gap = min(gap * 2, self._opts.probe_interval)
        return None

    async def _play(self, clip: Clip) -> None:
        try:
            handle = self._session.say(
                clip.text,
                audio=_frames(clip.frames()),
                allow_interruptions=False,
                add_to_chat_ctx=False,
            )
        except RuntimeError:  # the session is closing: nobody to play it to
            return
        await handle.wait_for_playout()

    def _listen(self, enabled: bool) -> None:
        # No room (tests, text mode): there is no caller audio to pause.
        if self._session.input.audio is not None:
            self._session.input.set_audio_enabled(enabled)


def _log_failure(task: asyncio.Task[None]) -> None:
    # a bug here must not vanish as "Task exception was never retrieved" at exit
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("the TTS outage policy failed: %s", describe(error), exc_info=error)


async def _frames(frames: list[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
    for frame in frames:
        yield frame
