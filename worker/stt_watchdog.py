"""A Deepgram socket that hangs is given up in seconds, and what it never finalized is replayed.

A hung socket (the peer stops reading and answering, no FIN) raises nothing: the plugin's
only guard is aiohttp's heartbeat (livekit-plugins-deepgram 1.8.9 hard-codes a ping every
30 s and 15 s for the pong), so the caller went unheard for up to 45 s and everything said
meanwhile went into the dead socket.  :class:`WatchedSTT` is ``deepgram.STT`` with two
additions per socket:

* a watchdog: once the caller's voice has gone to the socket and Deepgram has answered
  nothing at all since (Deepgram answers speech within a second: interim ``Results``,
  ``SpeechStarted``), the socket is failed the way aiohttp's heartbeat fails it, and the
  framework opens a new one (``stt_recovery.stt_connect_options``).  It watches voice, not
  audio: the fakes and some providers say nothing in silence, and a caller who is silent for
  minutes must not cause a reconnect every few seconds;
* a replay: the audio a socket was sent after the end of Deepgram's last final result (what it
  has not yet transcribed for good) is kept, the newest ``MAX_BACKLOG_S`` of it, and sent
  first on the next socket, whatever ended the old one (a hang, a drop, a kill).  What was
  finalized is not sent again, so no words are repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

import aiohttp
import numpy as np
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectionError, APIConnectOptions
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import aio
from livekit.plugins import deepgram
from livekit.plugins.deepgram import stt as dg_stt
from livekit.plugins.deepgram.models import DeepgramLanguages

from worker.stt_recovery import MAX_BACKLOG_S

logger = logging.getLogger("agent.stt")

HANG_AFTER_S: Final = 3.0
"""Voice sent this long ago with no message of any kind from Deepgram since: the socket is
hung.  Deepgram answers speech within about a second (interim results every second or so,
``SpeechStarted`` at once), so 3 s is several answers missed, not one slow one; and a false
alarm costs a reconnect (~0.1 s) with nothing lost, thanks to the replay."""

MIN_VOICED_S: Final = 0.5
"""At least this much voice unanswered: a click or a cough alone may bring no answer."""

MAX_HANG_AFTER_S: Final = 30.0
"""Each trip that is followed by a socket that answers nothing doubles the wait, up to this
(Deepgram down everywhere, or a line whose noise counts as voice and brings no answer): at
worst one reconnect every 30 s, never a storm.  Any answer brings it back to HANG_AFTER_S."""

VOICED_RMS: Final = 100.0
"""A 50 ms chunk louder than this (RMS of int16 samples, about -50 dBFS) counts as voice:
above a phone line's hiss, below any speech."""

CHECK_EVERY_S: Final = 0.25


class WatchedSTT(deepgram.STT):
    """``deepgram.STT`` whose streams give up a hung socket and replay what it swallowed."""

    def stream(
        self,
        *,
        language: NotGivenOr[DeepgramLanguages | str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> WatchedSpeechStream:
        # deepgram.STT.stream, with the subclass
        stream = WatchedSpeechStream(
            stt=self,
            conn_options=conn_options,
            opts=self._sanitize_options(language=language),
            api_key=self._api_key,
            http_session=self._ensure_session(),
            base_url=self._opts.endpoint_url,
        )
        self._streams.add(stream)
        return stream


class WatchedSpeechStream(dg_stt.SpeechStream):
    def __init__(
        self,
        *,
        stt: deepgram.STT,
        opts: dg_stt.STTOptions,
        conn_options: APIConnectOptions,
        api_key: str,
        http_session: aiohttp.ClientSession,
        base_url: str,
    ) -> None:
        super().__init__(
            stt=stt,
            opts=opts,
            conn_options=conn_options,
            api_key=api_key,
            http_session=http_session,
            base_url=base_url,
        )
        self._frame_bytes = 2 * opts.num_channels  # linear16
        self._rate = opts.sample_rate
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # the current socket's audio after the end of its last final result
        self._unfinalized = bytearray()
        self._unfinalized_from = 0  # where it starts, in samples the socket was sent
        self._sent = 0  # samples the current socket was sent
        # the watchdog's state: voice sent since Deepgram's last message
        self._voice_since: float | None = None  # time.monotonic() of its first chunk
        self._voiced = 0.0
        self._hang_after = HANG_AFTER_S
        self.hangs: list[float] = []
        """Per socket given up as hung, the wait it outlasted (HANG_AFTER_S, doubled...)."""
        self.replayed = 0.0
        """Seconds of audio sent again to a new socket."""
        self.dropped = 0.0
        """Seconds of unfinalized audio too old to replay (beyond MAX_BACKLOG_S)."""

    async def _run(self) -> None:
        watchdog = asyncio.create_task(self._watch())
        try:
            await super()._run()
        finally:
            await aio.cancel_and_wait(watchdog)

    async def _connect_ws(self) -> aiohttp.ClientWebSocketResponse:
        ws = await super()._connect_ws()
        replay = bytes(self._unfinalized)
        self._unfinalized.clear()
        self._unfinalized_from = self._sent = 0
        self._voice_since, self._voiced = None, 0.0
        send = ws.send_bytes

        async def send_bytes(data: bytes, compress: int | None = None) -> None:
            self._on_sent(data)
            await send(data, compress)

        # the plugin writes audio from a closure: this is where the bytes can be counted
        ws.send_bytes = send_bytes  # type: ignore[method-assign]
        self._ws = ws
        if replay:
            seconds = len(replay) / self._frame_bytes / self._rate
            logger.info("STT: sending the new socket %.2f s the old one did not finalize", seconds)
            self.replayed += seconds
            step = self._rate // 20 * self._frame_bytes  # 50 ms messages, as the plugin sends
            try:
                for offset in range(0, len(replay), step):
                    await ws.send_bytes(replay[offset : offset + step])
            except (aiohttp.ClientError, ConnectionError) as e:
                await ws.close()
                raise APIConnectionError("deepgram connection lost while replaying") from e
        return ws

    def _on_sent(self, data: bytes) -> None:
        samples = len(data) // self._frame_bytes
        self._sent += samples
        self._unfinalized += data
        excess = len(self._unfinalized) - int(MAX_BACKLOG_S * self._rate) * self._frame_bytes
        if excess > 0:
            excess -= excess % self._frame_bytes
            del self._unfinalized[:excess]
            self._unfinalized_from += excess // self._frame_bytes
            self.dropped += excess / self._frame_bytes / self._rate
        pcm = np.frombuffer(data[: samples * self._frame_bytes], dtype=np.int16)
        if len(pcm) and float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) >= VOICED_RMS:
            if self._voice_since is None:
                self._voice_since = time.monotonic()
            self._voiced += samples / self._rate

    def _process_stream_event(self, data: dict[str, Any]) -> None:
        # every message proves the socket alive; a final result moves the replay point
        self._voice_since, self._voiced = None, 0.0
        self._hang_after = HANG_AFTER_S
        if data.get("type") == "Results" and data.get("is_final"):
            end = float(data.get("start", 0.0)) + float(data.get("duration", 0.0))
            done = min(round(end * self._rate), self._sent) - self._unfinalized_from
            if done > 0:
                del self._unfinalized[: done * self._frame_bytes]
                self._unfinalized_from += done
        super()._process_stream_event(data)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            ws, since = self._ws, self._voice_since
            if ws is None or ws.closed or since is None or self._voiced < MIN_VOICED_S:
                continue
            waited = time.monotonic() - since
            if waited < self._hang_after:
                continue
            self.hangs.append(self._hang_after)
            logger.warning(
                "STT socket hung: %.1f s of the caller's voice unanswered for %.1f s; replacing it",
                self._voiced,
                waited,
            )
            self._hang_after = min(2 * self._hang_after, MAX_HANG_AFTER_S)
            self._voice_since, self._voiced = None, 0.0
            self._ws = None
            # as aiohttp's heartbeat gives a socket up: closed at once with no close
            # handshake (a hung peer would never answer it), and the plugin's reader gets
            # the error and raises a retryable APIConnectionError
            ws._handle_ping_pong_exception(
                aiohttp.ServerTimeoutError(f"no answer to {waited:.1f} s of voice")
            )
