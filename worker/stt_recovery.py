"""How long the caller's speech may go unheard when Deepgram's socket drops, and for how long
the worker keeps trying to reopen it.

The Deepgram plugin turns a dropped socket into a retryable error; the framework then opens
a new socket within the same stream, and the audio pushed meanwhile waits in the stream's
input and goes to the new socket (late, but nothing of it is lost).  With the framework's
defaults (3 retries, 2 s apart) the stream gives up after ~4 s of refused connects; the
session recreates it, and after 3 more such failures in a row it closes: a Deepgram outage
of ~20 s ends the call, with no word to the caller.  docs/reliability.md has the details.

Here: retries for an hour, 0.5 s apart (``stt_connect_options``), and, as the framework would
keep every frame of a long outage and send it all at once, an ``AudioGate`` that keeps only
the newest 10 s for the new socket.  A socket that hangs, rather than drops, raises nothing
for 45 s: ``stt_watchdog`` gives it up and replays what it swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any, Final

from livekit import rtc
from livekit.agents import Agent, APIConnectOptions, ModelSettings
from livekit.agents.metrics import STTMetrics
from livekit.agents.stt import STT, SpeechEvent, STTError

logger = logging.getLogger("agent.stt")

RETRY_INTERVAL_S: Final = 0.5
"""Between two connects.  A restarted server listens again 1-2 s after it died: this finds
it at most 0.5 s late, and one call makes 2 connects a second at worst, not a flood."""

CONNECT_TIMEOUT_S: Final = 5.0
"""A handshake Deepgram does not answer: give up on it and try again (default 10 s)."""

OUTAGE_BUDGET_S: Final = 3600.0
"""Keep trying for this long while every connect fails: longer than any call, so an outage
never closes the session; the caller hears again as soon as a socket opens."""


def stt_connect_options() -> APIConnectOptions:
    """The STT stream's retry policy (``SessionConnectOptions.stt_conn_options``).

    The framework counts only consecutive quick failures: a socket that stays up longer than
    ``timeout``, or a final transcript, starts the count over.
    """
    return APIConnectOptions(
        max_retry=int(OUTAGE_BUDGET_S / RETRY_INTERVAL_S),
        retry_interval=RETRY_INTERVAL_S,
        timeout=CONNECT_TIMEOUT_S,
    )


MAX_BACKLOG_S: Final = 10.0
"""Of what the caller said while the STT had no socket, the newest this many seconds go to the
new socket; older speech is dropped.  A restart (1-2 s) loses nothing; after a long outage the
agent hears the caller's latest words, not a minute of stale speech in a burst, and the
audio held stays bounded (320 KB)."""


class AudioGate:
    """Holds the caller's audio while the STT is reconnecting, up to ``max_backlog`` seconds.

    The framework would keep every frame in the stream's input until a socket opens, however
    long that takes.  The STT's own events say when: a recoverable error is a lost socket (or
    a failed attempt), a connection-acquired metric a new socket.
    """

    def __init__(self, stt_: STT[Any], *, max_backlog: float = MAX_BACKLOG_S) -> None:
        self._stt = stt_
        self._max_backlog = max_backlog
        self._connected = asyncio.Event()
        self._connected.set()
        self._frames: deque[rtc.AudioFrame] = deque()
        self._held = 0.0  # seconds in _frames
        self._arrived = asyncio.Event()
        self._ended = False
        self.dropped = 0.0
        """Seconds of the caller's audio dropped so far, the oldest of each outage."""
        stt_.on("error", self._on_error)
        stt_.on("metrics_collected", self._on_metrics)

    def close(self) -> None:
        self._stt.off("error", self._on_error)
        self._stt.off("metrics_collected", self._on_metrics)

    async def hold(self, audio: AsyncIterable[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
        """``audio``, frame for frame while connected; the newest while not."""
        reader = asyncio.create_task(self._read(audio))
        try:
            while True:
                await self._connected.wait()
                if self._frames:
                    frame = self._frames.popleft()
                    self._held -= frame.duration
                    yield frame
                elif self._ended:
                    return
                else:
                    self._arrived.clear()
                    await self._arrived.wait()
        finally:
            reader.cancel()

    async def _read(self, audio: AsyncIterable[rtc.AudioFrame]) -> None:
        try:
            async for frame in audio:
                self._frames.append(frame)
                self._held += frame.duration
                while self._held > self._max_backlog and len(self._frames) > 1:
                    old = self._frames.popleft()
                    self._held -= old.duration
                    self.dropped += old.duration
                self._arrived.set()
        finally:
            self._ended = True
            self._arrived.set()

    def _on_error(self, error: STTError) -> None:
        if error.recoverable and self._connected.is_set():
            self._connected.clear()
            logger.warning("STT socket lost: holding the caller's audio until it reopens")

    def _on_metrics(self, metrics: Any) -> None:
        # the plugin reports each new socket as usage-free metrics
        if (
            isinstance(metrics, STTMetrics)
            and not metrics.request_id
            and not metrics.audio_duration
        ):
            if not self._connected.is_set():
                logger.info("STT socket reopened (%.1f s of audio dropped so far)", self.dropped)
            self._connected.set()
            self._arrived.set()


async def gated_stt_node(
    agent: Agent, audio: AsyncIterable[rtc.AudioFrame], model_settings: ModelSettings
) -> AsyncGenerator[SpeechEvent, None]:
    """``Agent.stt_node`` with the caller's audio passed through an :class:`AudioGate`."""
    stt_ = agent.session.stt
    if stt_ is None:
        return
    gate = AudioGate(stt_)
    try:
        async for ev in Agent.default.stt_node(agent, gate.hold(audio), model_settings):
            yield ev
    finally:
        gate.close()
