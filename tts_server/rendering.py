"""One admitted request rendered as the protocol messages that carry its audio, in order.

:meth:`Rendering.messages` is an async generator of ``WordTimestamps`` and ``Audio``
messages: whoever sends them (a WebSocket session today) only moves them.  The segments are
rendered by the voice in the synthesis pool, each by the time its listener would run out of
the audio before it, and the audio is encoded in the format the request asked for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, Final

import knowlithic_protocol as protocol
from knowlithic_protocol import formats

from . import audio
from .admission import StreamKey
from .audio import StreamResampler
from .engines import RenderedSegment, Voice
from .headroom import Pending
from .state import ServerState
from .text import Boundary, Segment, cost
from .timestamps import TimedWord
from .verdict import Admit

_LOG = logging.getLogger("tts_server.rendering")

# Pause after a first clause split off early, and after a sentence end Piper found inside a
# segment, as a share of the pause between sentences.
_CLAUSE_PAUSE_RATIO: Final = 0.5


class Rendering:
    """The audio of one admitted request; owns its encoder, its metrics and its booking (the
    place, the stream's books, the work admission counts) until :meth:`release`."""

    def __init__(
        self,
        msg: protocol.TextToSpeech,
        voice: Voice,
        segments: list[Segment],
        state: ServerState,
        *,
        arrived: float,
        needed_at: float,
        estimate: float,
        stream: StreamKey | None = None,
        speed: float = 1.0,
    ) -> None:
        self._msg = msg
        self._stream = stream
        self._estimate = estimate
        self._released = False
        self._speed = speed  # the pace against the server's own (OpenAI's ``speed``)
        self._voice = voice
        self._segments = segments
        self._state = state
        self._arrived = arrived
        # when the listener needs the first audio; segment deadlines count from here
        self._needed_at = needed_at
        self.audio_seconds = 0.0  # rendered so far, on the voice's own timeline
        self._sequence = 0
        self._encoder_rate = msg.sample_rate
        # The work this request owes the synthesis pool, counted by admission until it ends:
        # a reply's first audio is due within the target, a later sentence when the audio
        # before it runs out.
        costs = [cost(s.text) for s in segments]
        total = sum(costs) or 1
        due = needed_at + (state.headroom.target if needed_at <= arrived else 0.0)
        self.pending = Pending(costs, [estimate * c / total for c in costs], due)
        state.headroom.add(self.pending)
        state.metrics.active_requests.inc()

    @classmethod
    def admitted(
        cls, msg: protocol.TextToSpeech, verdict: Admit, state: ServerState, *, speed: float = 1.0
    ) -> Rendering:
        """The rendering of a request admission let in (its place booked), arriving now."""
        now = asyncio.get_running_loop().time()
        return cls(
            msg,
            verdict.voice,
            verdict.segments,
            state,
            arrived=now,
            needed_at=now + verdict.delay,
            estimate=verdict.estimate,
            stream=verdict.stream,
            speed=speed,
        )

    @property
    def sample_rate(self) -> int:
        """The rate of the audio: the format's encoder may not offer the rate asked for
        (known once :meth:`messages` has started)."""
        return self._encoder_rate

    def release(self, outcome: str, *, interrupted: bool) -> bool:
        """The request ended with ``outcome`` (a ``requests`` metric label): its place, its
        work and its gauge are given back, once (True the first time).  ``interrupted``: the
        reply is over (a cancel, or its client went), so its stream gets no idle window."""
        if self._released:
            return False
        self._released = True
        state = self._state
        state.headroom.remove(self.pending)
        state.capacity.release()
        state.streams.end(
            self._stream,
            cancelled=interrupted,
            misestimate=self.audio_seconds - self._estimate,
        )
        state.metrics.active_requests.dec()
        state.metrics.requests.labels(outcome).inc()
        return True

    async def messages(self) -> AsyncGenerator[protocol.ServerMessage, None]:
        msg, voice, state = self._msg, self._voice, self._state
        config = state.config
        resampler = StreamResampler(voice.sample_rate, msg.sample_rate)
        message_ms = formats.get(msg.output_format).message_ms or config.chunk_ms
        chunk_samples = max(1, msg.sample_rate * message_ms // 1000)
        # the first message is a short one whatever the format: it is the first audio
        first_samples = min(chunk_samples, max(1, msg.sample_rate * config.chunk_ms // 1000))
        # faster speech has shorter pauses too, as a faster speaker's
        sentence_pause = config.sentence_silence / self._speed
        clause_pause = sentence_pause * _CLAUSE_PAUSE_RATIO
        pauses = {Boundary.SENTENCE: sentence_pause, Boundary.CLAUSE: clause_pause}
        encoder = formats.new_encoder(
            msg.output_format,
            sample_rate=msg.sample_rate,
            bitrate=msg.bitrate or config.opus_bitrate,
        )
        self._encoder_rate = encoder.sample_rate  # a format may not offer the rate asked for
        compute = 0.0
        headroom, pending = state.headroom, self.pending
        anchor: float | None = None  # when the listener started (or resumed) hearing it
        last_index = len(self._segments) - 1
        for index, segment in enumerate(self._segments):
            render = functools.partial(
                _timed,
                pending,
                voice.render,
                segment.text,
                resampler=resampler,
                pause_after=pauses.get(segment.boundary, 0.0),
                inner_pause=clause_pause,
                last=index == last_index,
                with_words=msg.word_timestamps,
                speed=self._speed,
            )
            # Deadline: when the listener would run out of this request's audio.
            rendered: RenderedSegment = await state.scheduler.run(
                render, self._needed_at + self.audio_seconds
            )
            compute += rendered.compute_seconds
            headroom.observe_synthesis(cost(segment.text), rendered.compute_seconds)
            if rendered.words:
                yield protocol.WordTimestamps(
                    request_id=msg.request_id,
                    words=_shifted(rendered.words, self.audio_seconds),
                    estimated=rendered.estimated,
                )
            self.audio_seconds += rendered.native_seconds
            if anchor is None:
                anchor = max(self._needed_at, asyncio.get_running_loop().time())
            pending.end_segment(anchor + self.audio_seconds)
            position = 0
            total = len(rendered.pcm) // 2
            if self._sequence == 0 and first_samples < min(chunk_samples, total):
                sizes = [first_samples, *audio.chunk_sizes(total - first_samples, chunk_samples)]
            else:
                sizes = audio.chunk_sizes(total, chunk_samples)
            for size in sizes:
                pcm = rendered.pcm[position : position + size * 2]
                position += size * 2
                if message := self._audio(encoder.encode(pcm)):
                    yield message
        # a format may hold back the start of a frame, and ends its stream (Opus: EOS page)
        if message := self._audio(encoder.encode(b"", last=True)):
            yield message
        if self.audio_seconds > 0:
            state.metrics.audio_seconds.inc(self.audio_seconds)
            state.metrics.real_time_factor.observe(compute / self.audio_seconds)
        _LOG.debug(
            "request of %d characters: %.2f s of audio in %.3f s of synthesis",
            len(msg.text),
            self.audio_seconds,
            compute,
        )

    def _audio(self, data: bytes) -> protocol.Audio | None:
        """The next audio message, if the encoder gave anything to send."""
        if not data:
            return None
        if self._sequence == 0:
            loop = asyncio.get_running_loop()
            self._state.metrics.time_to_first_audio.observe(loop.time() - self._arrived)
        message = protocol.Audio(
            request_id=self._msg.request_id,
            data=data,
            sample_rate=self._encoder_rate,
            sequence=self._sequence,
        )
        self._sequence += 1
        return message


def _timed(
    pending: Pending, render: Callable[..., RenderedSegment], text: str, **how: Any
) -> RenderedSegment:
    """Render in the worker thread, telling admission when the work began."""
    pending.begin_segment(time.monotonic())
    return render(text, **how)


def _shifted(words: tuple[TimedWord, ...], offset: float) -> tuple[protocol.WordTiming, ...]:
    return tuple(protocol.WordTiming(w.word, w.start + offset, w.end + offset) for w in words)
