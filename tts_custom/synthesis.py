"""Speak a stream of sentences over the shared connection, one request per sentence.

Each sentence becomes its own ``text_to_speech`` request as soon as the tokenizer completes
it, so the first audio never waits for the rest of the reply.  Later sentences are sent ahead
so the server works while earlier ones play, but each only once the server has begun to
answer the one before it: sent at once, they would compete with the first sentence for the
server's CPU and delay the first audio.  Their audio is played strictly in order.  Whatever
ends the synthesis early (an interruption, an error) cancels every request still open, so
the server stops and no late audio reaches the next turn.

Because every sentence is its own request, a failure costs one sentence, not the reply: once
the reply has begun to play, a sentence the server refused for a passing reason (busy, rate
limited, shutting down) or lost with its socket is requested again, on a new socket if need
be, waiting for a restarting server within the reply's patience.  When part of it had already
played, the part already heard is skipped in the new rendition, so no sentence is lost and
none is spoken twice.  The framework cannot do this: it gives a stream up once audio has
played, and retries a whole text from its start.  So once audio has played, or the reply's
patience is spent, no error leaves here marked retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError, tts
from livekit.agents.types import TimedString

import knowlithic_protocol as protocol
from knowlithic_protocol import formats
from knowlithic_protocol.formats import AudioFormatError, PcmChunk, new_decoder

from .alignment import align_words
from .backoff import Patience
from .errors import connection_lost_error, did_not_come_back, final, server_error, unsupported
from .log import logger
from .shared_connection import Acquired
from .transport import Channel, ConnectionLost, Transport

# bounds the wait for a cancel to be written when the socket is stalled
_CANCEL_SEND_TIMEOUT = 1.0
# requests per sentence: the first, then retries after passing failures
_MAX_ATTEMPTS = 3
_RETRY_DELAY = 0.1  # doubled on every further retry of the same sentence
# With another server to go to, a request its server has not answered for this long moves
# there (a frozen process, a host gone without a reset): a loaded server's first audio takes
# well under half of it (docs/benchmarks.md); alone, a reply waits its whole patience.
MOVE_AFTER_SILENCE = 1.5


class Connections(Protocol):
    """Where connections come from (the TTS's :class:`ServerPool`)."""

    @property
    def alternatives(self) -> bool:
        """Whether another server may take a reply its server cannot finish."""
        ...

    def acquire(self, timeout: float) -> Awaitable[Acquired]: ...

    def invalidate(self, conn: Transport | None = None) -> None: ...

    def busy(self, conn: Transport) -> None:
        """``conn``'s server refused a reply as full."""
        ...

    def stalled(self, conn: Transport) -> None:
        """``conn``'s server owes an answer and has said nothing for too long."""
        ...


@dataclass
class _Sentence:
    index: int
    text: str
    channel: Channel | None = None
    attempts: int = 0
    output_format: protocol.OutputFormat = "pcm"  # of its latest request
    played: int = 0  # output samples of this sentence already pushed
    words_sent: bool = False
    started_at: float = 0.0  # the stream's audio duration when this sentence began


class AudioSink:
    """Writes decoded PCM to the emitter as mono s16le at the stream's declared rate.

    The audio's real rate wins over the configured one: audio at any other rate is
    resampled, with one resampler per stream so sentence seams stay continuous.
    """

    def __init__(self, emitter: tts.AudioEmitter, *, sample_rate: int) -> None:
        self._emitter = emitter
        self._rate = sample_rate
        self._resampler: rtc.AudioResampler | None = None
        self._resampler_rate = 0
        self.samples = 0
        self._skip = 0

    @property
    def duration(self) -> float:
        return self.samples / self._rate

    def skip(self, samples: int) -> None:
        """Drop the next ``samples`` output samples: they were heard from another rendition."""
        self._skip = samples

    def write(self, chunk: PcmChunk) -> int:
        """Push ``chunk``; returns the output samples that reached the emitter."""
        pcm = chunk.pcm
        if chunk.num_channels > 1:
            frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, chunk.num_channels)
            pcm = frames.mean(axis=1).astype("<i2").tobytes()
        if chunk.sample_rate == self._rate:
            return self._push(pcm)
        if self._resampler_rate != chunk.sample_rate:
            self.flush()
            self._resampler = rtc.AudioResampler(chunk.sample_rate, self._rate, num_channels=1)
            self._resampler_rate = chunk.sample_rate
        assert self._resampler is not None
        frame = rtc.AudioFrame(pcm, chunk.sample_rate, 1, len(pcm) // 2)
        return sum(self._push(out.data.tobytes()) for out in self._resampler.push(frame))

    def flush(self) -> None:
        if self._resampler is not None:
            for out in self._resampler.flush():
                self._push(out.data.tobytes())
            self._resampler, self._resampler_rate = None, 0

    def _push(self, pcm: bytes) -> int:
        if self._skip:
            dropped = min(self._skip, len(pcm) // 2)
            self._skip -= dropped
            pcm = pcm[dropped * 2 :]
        if not pcm:
            return 0
        self.samples += len(pcm) // 2
        self._emitter.push(pcm)
        return len(pcm) // 2


class SentenceSynthesis:
    """Turns sentences into requests and their audio into the emitter, in order."""

    def __init__(
        self,
        *,
        connections: Connections,
        patience: Patience,
        template: protocol.TextToSpeech,
        emitter: tts.AudioEmitter,
        window: int,
        on_connected: Callable[[Acquired], None],
        on_first_request: Callable[[], None],
        retry_pause: float = 0.0,
    ) -> None:
        self._connections = connections
        self._conn: Transport | None = None
        # the server said it is shutting down (or, with other servers to go to, that it is
        # full): new requests go to a new connection
        self._leaving: APIError | None = None
        self._patience = patience
        self._template = template
        # what the caller asked for; a server without it gets the fallback (see _format_for)
        self._preferred_format = template.output_format
        self._emitter = emitter
        self._sink = AudioSink(emitter, sample_rate=template.sample_rate)
        self._window = asyncio.Semaphore(window)
        self._on_connected = on_connected
        # how long the framework will wait before retrying this attempt, should it fail
        self._retry_pause = retry_pause
        self._on_first_request = on_first_request
        self._queue: asyncio.Queue[_Sentence | None] = asyncio.Queue()
        self._open: list[_Sentence] = []
        self._requests = 0
        self.skipped = 0  # sentences with nothing to say

    async def run(self, sentences: AsyncIterable[str]) -> None:
        try:
            await self._connect()
            await self._run(sentences)
        except APIError as e:
            settled = self._settled(e)
            if settled is e:
                raise
            raise settled from e
        self._sink.flush()
        if self.skipped and not self._sink.samples:
            # the text had nothing to say: a short silence tells the framework the reply was
            # spoken (as nothing) rather than lost, so it does not retry it or report an error
            self._sink.write(_silence(self._template.sample_rate))

    async def _run(self, sentences: AsyncIterable[str]) -> None:
        send = asyncio.create_task(self._send_all(sentences), name="knowlithic.send")
        play = asyncio.create_task(self._play_all(), name="knowlithic.play")
        try:
            done, _ = await asyncio.wait({send, play}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raise the first failure
            await play
        finally:
            for task in (send, play):
                task.cancel()
            await asyncio.gather(send, play, return_exceptions=True)
            await self._cancel_open()

    def _settled(self, error: APIError) -> APIError:
        """What the framework may do with ``error``: retry only before any audio played and
        while the reply's patience outlasts the framework's pause before its retry, or the
        caller would hear the start twice, or wait past the timeout."""
        self._patience.error = error
        left = self._patience.left(time.monotonic())
        if error.retryable and (self._sink.samples or left <= self._retry_pause):
            return final(error)
        return error

    async def _connect(self) -> None:
        """The connection for the first request (a retry of the stream calls this again)."""
        began = time.monotonic()
        if self._patience.spent(began) and self._patience.error is not None:
            raise final(self._patience.error)  # the fault that spent it, not a 0 s timeout
        try:
            acquired = await self._connections.acquire(self._patience.left(began))
        except APIError:
            self._patience.fault(began)
            raise
        self._on_connected(acquired)
        self._use(acquired.connection)

    async def _reconnect(self) -> None:
        """A new connection, after the server dropped the last one, said it shuts down, or
        (with other servers to go to) said it is full."""
        old = self._conn
        assert old is not None
        fault = old.lost_error() if old.closed else self._leaving
        began = old.fault_began if old.closed else time.monotonic()
        self._patience.fault(began)
        if old.closed:
            self._connections.invalidate(old)
        try:
            acquired = await self._connections.acquire(self._patience.left(time.monotonic()))
        except APIError as e:
            raise did_not_come_back(fault, e) if fault is not None else e from None
        self._use(acquired.connection)

    def _use(self, conn: Transport) -> None:
        caps = conn.capabilities
        self._template = replace(
            self._template, output_format=_format_for(conn, self._preferred_format)
        )
        if caps is not None:
            check_supported(caps, self._template)
            if not caps.word_timestamps and self._template.word_timestamps:
                self._template = replace(self._template, word_timestamps=False)
        self._conn = conn
        self._leaving = None

    async def _send_all(self, sentences: AsyncIterable[str]) -> None:
        count = 0
        previous: _Sentence | None = None
        async for text in sentences:
            if not speakable(text):
                # emoji, dashes, "...": nothing to say, and a request would return no audio
                self.skipped += 1
                continue
            for piece in _fit(text, self._max_text_length()):
                await self._window.acquire()
                if previous is not None:
                    await _answered(previous)
                sentence = previous = _Sentence(index=count, text=piece)
                count += 1
                self._open.append(sentence)
                self._on_first_request()
                await self._request(sentence)
                self._queue.put_nowait(sentence)  # only now has it a channel to play from
        self._queue.put_nowait(None)

    async def _request(self, sentence: _Sentence) -> None:
        """Send (or send again) one sentence's request on the current connection."""
        if sentence.channel is not None:
            sentence.channel.close()  # the failed rendition gives its request slot back
            # whoever waits for it to be answered (_answered) waits for the new request now
            sentence.channel.answered.set()
        request_id = f"{self._template.request_id}-{self._requests}"
        self._requests += 1
        sentence.attempts += 1
        while True:
            assert self._conn is not None
            if self._conn.closed or self._leaving:
                await self._reconnect()
            conn = self._conn
            assert conn is not None
            try:
                channel = await conn.open_request(request_id)
                break
            except APIConnectionError:
                if not conn.closed:
                    raise
                # it died while this request waited for a slot: on to the next one
        sentence.channel = channel
        sentence.output_format = self._template.output_format
        await channel.send(replace(self._template, request_id=request_id, text=sentence.text))

    async def _play_all(self) -> None:
        while (sentence := await self._queue.get()) is not None:
            await self._play(sentence)
            if sentence.channel is not None:
                sentence.channel.close()
            self._open.remove(sentence)
            self._window.release()

    async def _play(self, sentence: _Sentence) -> None:
        sentence.started_at = self._sink.duration
        while True:
            try:
                await self._play_attempt(sentence)
                return
            except APIError as e:
                # before the stream's first audio the framework retries the whole stream
                # (with its error events and pacing); after it, only we can.  With other
                # servers to go to, we move the reply at once instead: no pause, no error.
                if (
                    (not self._sink.samples and not self._connections.alternatives)
                    or not e.retryable
                    or self._patience.spent(time.monotonic())
                    or sentence.attempts >= _MAX_ATTEMPTS
                ):
                    raise
                logger.info(
                    "requesting a sentence again after: %s",
                    e.message,
                    extra={"sentence": sentence.index, "played_samples": sentence.played},
                )
            if not self._moving():  # another server needs no pause: it is not the one failing
                delay = _RETRY_DELAY * 2 ** (sentence.attempts - 1)
                await asyncio.sleep(min(delay, self._patience.left(time.monotonic())))
            await self._request(sentence)
            # sentences sent ahead on a socket that died, or to a server the reply left, are
            # asked for again now, not on their turn, so the server renders them while this
            # one plays (none of their audio has played: they were not begun)
            for later in self._open:
                if later is sentence or later.channel is None:
                    continue
                if later.channel.lost or later.channel.transport is not self._conn:
                    await self._abandon(later.channel)
                    await self._request(later)

    async def _play_attempt(self, sentence: _Sentence) -> None:
        assert sentence.channel is not None
        channel = sentence.channel
        decoder = new_decoder(sentence.output_format, sample_rate=self._template.sample_rate)
        self._sink.skip(sentence.played)  # a new rendition resumes where the last one stopped
        patience = self._patience
        may_move = self._connections.alternatives
        while True:
            began = time.monotonic()
            wait = patience.left(began)
            if wait <= 0:
                # the fault that began before this rendition spent the reply's whole wait
                raise APITimeoutError(
                    f"Knowlithic TTS did not recover within {patience.seconds:g} s of a fault",
                    retryable=False,
                )
            try:
                event = await channel.receive(min(wait, MOVE_AFTER_SILENCE) if may_move else wait)
            except APITimeoutError as e:
                patience.fault(began)  # a stall: the whole wait was the fault
                if may_move and not patience.spent(time.monotonic()):
                    self._connections.stalled(channel.transport)
                    self._leave(channel.transport, e)
                raise
            if isinstance(event, protocol.Audio):
                if patience.since is not None:
                    patience.recovered()
                try:
                    chunk = decoder.feed(event.data, sample_rate=event.sample_rate)
                except AudioFormatError as e:
                    raise _unplayable(e) from None
                if chunk is not None:
                    sentence.played += self._sink.write(chunk)
            elif isinstance(event, protocol.WordTimestamps):
                self._push_words(sentence, event)
            elif isinstance(event, protocol.Complete):
                if event.cancelled:
                    patience.fault(began)
                    raise APIConnectionError("Knowlithic TTS cancelled the request itself")
                if decoder.pending_bytes:
                    logger.debug("%d bytes were left undecoded", decoder.pending_bytes)
                try:
                    chunk = decoder.finish()
                except AudioFormatError as e:
                    raise _unplayable(e) from None
                if chunk is not None:
                    sentence.played += self._sink.write(chunk)
                self._sink.skip(0)
                return
            elif isinstance(event, protocol.Error):
                patience.fault(began)
                error = server_error(event)
                if event.code == protocol.ERR_SHUTTING_DOWN:
                    # it finishes what it has and takes nothing new: ask elsewhere (or once it
                    # is back).  Retire only the socket that carried the error: a sentence
                    # sent ahead on the old one may report it after the reply moved on.
                    self._connections.invalidate(channel.transport)
                    self._leave(channel.transport, error)
                elif event.code == protocol.ERR_BUSY and self._connections.alternatives:
                    # full: the reply goes to another server (this one keeps its socket)
                    self._connections.busy(channel.transport)
                    self._leave(channel.transport, error)
                raise error
            elif isinstance(event, ConnectionLost):
                # the server may have stopped answering long before its socket died
                patience.fault(min(began, channel.transport.fault_began))
                raise connection_lost_error(event.close_code, event.reason)

    def _moving(self) -> bool:
        """Whether the next request goes to another server."""
        conn = self._conn
        return self._connections.alternatives and (
            self._leaving is not None or (conn is not None and conn.closed)
        )

    def _leave(self, transport: Transport, error: APIError) -> None:
        """Send the next requests elsewhere, if ``transport`` is still the one in use."""
        if transport is self._conn:
            self._leaving = error

    async def _abandon(self, channel: Channel) -> None:
        """Cancel a request whose audio will come from another one (it frees the server)."""
        if not channel.lost:
            with contextlib.suppress(TimeoutError, APIError):
                await asyncio.wait_for(channel.cancel(), _CANCEL_SEND_TIMEOUT)

    def _push_words(self, sentence: _Sentence, event: protocol.WordTimestamps) -> None:
        if sentence.words_sent:
            return  # a second rendition of a sentence whose words were already given
        sentence.words_sent = True
        # the tokenizer strips the space between sentences; the transcript keeps it
        text = sentence.text if sentence.index == 0 else " " + sentence.text
        for piece in align_words(text, event.words, offset=sentence.started_at):
            self._emitter.push_timed_transcript(
                TimedString(piece.text, start_time=piece.start, end_time=piece.end)
            )

    def _max_text_length(self) -> int | None:
        caps = self._conn.capabilities if self._conn is not None else None
        return caps.max_text_length if caps is not None else None

    async def _cancel_open(self) -> None:
        open_requests, self._open = self._open, []
        for sentence in open_requests:
            if sentence.channel is None:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sentence.channel.cancel(), _CANCEL_SEND_TIMEOUT)


def _unplayable(error: AudioFormatError) -> APIStatusError:
    """Audio that cannot be played fails its request, not the socket."""
    return APIStatusError(
        f"Knowlithic TTS sent audio that cannot be played: {error}",
        status_code=502,
        retryable=False,
    )


async def _answered(sentence: _Sentence) -> None:
    """Wait until the server has begun to answer ``sentence`` (on its latest request)."""
    while (channel := sentence.channel) is not None and not channel.answered.is_set():
        await channel.answered.wait()


def speakable(text: str) -> bool:
    """Whether ``text`` has anything to say: a letter or a digit in any script."""
    return any(ch.isalnum() for ch in text)


def _silence(sample_rate: int) -> PcmChunk:
    samples = sample_rate // 50  # 20 ms
    return PcmChunk(pcm=bytes(2 * samples), sample_rate=sample_rate, num_channels=1)


# transports already told that their server lacks the format asked for (said once each)
_told_fallback: weakref.WeakSet[Transport] = weakref.WeakSet()
FALLBACK_FORMAT: protocol.OutputFormat = "pcm"


def _format_for(conn: Transport, preferred: protocol.OutputFormat) -> protocol.OutputFormat:
    """``preferred`` if the server takes it, else PCM: a format not every server knows is
    asked for only from a server whose capabilities list it."""
    caps = conn.capabilities
    if formats.get(preferred).universal or (caps is not None and preferred in caps.output_formats):
        return preferred
    if conn not in _told_fallback:
        _told_fallback.add(conn)
        logger.info(
            "the Knowlithic TTS server does not offer %s audio; using %s",
            preferred,
            FALLBACK_FORMAT,
        )
    return FALLBACK_FORMAT


def check_supported(caps: protocol.Capabilities, request: protocol.TextToSpeech) -> None:
    """Refuse, before sending it, a request the server's capabilities rule out."""
    if caps.voices and request.voice not in caps.voices:
        raise unsupported(f"voice {request.voice!r}; it offers {', '.join(caps.voices)}")
    if caps.sample_rates and request.sample_rate not in caps.sample_rates:
        rates = ", ".join(str(r) for r in caps.sample_rates)
        raise unsupported(f"{request.sample_rate} Hz output; it offers {rates}")
    if caps.output_formats and request.output_format not in caps.output_formats:
        raise unsupported(
            f"{request.output_format} output; it offers {', '.join(caps.output_formats)}"
        )


def _fit(text: str, limit: int | None) -> list[str]:
    """Split a sentence longer than the server accepts at word boundaries."""
    if limit is None or len(text) <= limit:
        return [text]
    pieces: list[str] = []
    current = ""
    for whole_word in text.split(" "):
        word = whole_word
        while len(word) > limit:  # a "word" longer than the limit: cut it
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:limit])
            word = word[limit:]
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= limit:
            current = candidate
        else:
            pieces.append(current)
            current = word
    if current:
        pieces.append(current)
    return pieces
