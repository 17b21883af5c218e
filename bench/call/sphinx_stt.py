"""An offline stand-in for Deepgram's streaming STT: pocketsphinx behind LiveKit's STT API.

The session sees what Deepgram's streaming STT gives it, per phrase:

* START_OF_SPEECH when voice activity begins (3 of 5 30 ms frames voiced and louder than
  -65 dBFS: webrtc's VAD alone can take digital silence after speech for voice for seconds),
* INTERIM_TRANSCRIPT as the hypothesis grows (at most every ``interim_interval`` seconds of
  audio, only when the text changed, never empty),
* after ``endpoint_silence`` seconds without voice: FINAL_TRANSCRIPT with the whole phrase
  (only when there are words, as Deepgram skips empty results), then END_OF_SPEECH,
* RECOGNITION_USAGE with the seconds of audio pushed, every 5 s and at each flush.

A flush or the end of input finalizes a phrase in progress.  Phrases longer than 30 s get a
FINAL_TRANSCRIPT without END_OF_SPEECH and carry on, as Deepgram finalizes long speech.

The decoding runs in a worker process, one per stream and reused from a pool: pocketsphinx
holds the GIL while it decodes, so a thread would stall the event loop just as much (a decoder
takes 0.35 s to build, a 3 s phrase 0.25 s to decode).  Each worker is driven from a thread
of its own with blocking pipe I/O, which keeps workers independent of any event loop.  Voice
activity detection (webrtc's, shipped with pocketsphinx) stays in this process: microseconds.
A worker takes ~1.5 s to start (it imports this module, hence livekit) and ~220 MB: the
session's ``prewarm()`` starts one, a benchmark can ``await warm_up()`` before it measures.

It recognizes Piper's synthetic speech well and natural speech poorly: a benchmark tool, never
part of the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import struct
import subprocess
import sys
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Never

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    LanguageCode,
    stt,
    utils,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.agents.utils import AudioBuffer, is_given
from pocketsphinx import Vad

from .audio_io import mono

logger = logging.getLogger(__name__)

SAMPLE_RATE: Final = 16000
"""What the decoder and the voice activity detector take (mono s16le)."""

Pcm = npt.NDArray[np.int16]

_VAD_FRAME: Final = 480  # 30 ms, a length webrtc's VAD accepts at 16 kHz
_ONSET_WINDOW: Final = 5  # frames...
_ONSET_VOICED: Final = 3  # ...of which this many voiced start a phrase: a click does not
_PREROLL_FRAMES: Final = 15  # the decoder gets >= 0.3 s before the onset (lower WER than 0.1 s)
_FLOOR_POWER: Final = (32768 * 10 ** (-65 / 20)) ** 2  # -65 dBFS RMS: quieter is not voice
_FEED_FRAMES: Final = 3  # decode 90 ms at a time: a new hypothesis every 90 ms of audio
_USAGE_PERIOD: Final = 5.0  # seconds of audio per RECOGNITION_USAGE, as Deepgram's plugin
_MAX_PHRASE: Final = 30 * SAMPLE_RATE  # bounds the decoder's memory and final search

# maxhmmpf bounds the search (same WER as the default on speech, noise no longer explodes it).
# No fwdflat pass: the same WER on Piper's speech, and the final search takes ~6 ms, not ~65.
_DECODER_CONFIG: Final[dict[str, Any]] = {
    "samprate": SAMPLE_RATE,
    "loglevel": "FATAL",
    "maxhmmpf": 3000,
    "fwdflat": False,
}

# Worker protocol, little-endian: request (op, payload bytes) + s16le audio; reply
# (confidence, text bytes) + UTF-8 text.  Every request gets exactly one reply.
_REQUEST: Final = struct.Struct("<BI")
_REPLY: Final = struct.Struct("<fI")
_OP_PING, _OP_START, _OP_FEED, _OP_END, _OP_RECOGNIZE = range(5)
_NOT_WORDS: Final = frozenset({"<s>", "</s>", "<sil>"})
# a phrase of one word and less voice than this is a sound, not speech (without fillers)
_SHORT_SOUND_S: Final = 0.4
# What Deepgram leaves out with filler_words=False ("uh", "um", "mhmm", "uh-huh"...), as
# pocketsphinx spells such sounds: an "mm-hm" comes out as "m m".
FILLERS: Final = frozenset(
    {"uh", "um", "uhm", "er", "erm", "ah", "hm", "hmm", "m", "mm", "mhm", "mhmm", "huh", "uh-huh"}
)

_ROOT: Final = str(Path(__file__).resolve().parents[2])  # holds the ``bench`` package
_BOOT: Final = (
    f"import sys; sys.path.insert(0, {_ROOT!r}); from bench.call.sphinx_stt import _serve; _serve()"
)


@dataclass
class _STTOptions:
    language: LanguageCode
    endpoint_silence: float
    interim_interval: float
    vad_mode: int
    filler_words: bool


class SphinxSTT(stt.STT[Never]):  # no events beyond metrics_collected and error
    def __init__(
        self,
        *,
        endpoint_silence: float = 0.25,
        interim_interval: float = 0.15,
        vad_mode: int = 0,
        language: str = "en",
        filler_words: bool = True,
    ) -> None:
        """Offline US English streaming STT (pocketsphinx).

        Args:
            endpoint_silence: Seconds without voice that end a phrase; the final follows
                ~0.27 s after the speech (30 ms VAD frames, ~10 ms final search).  0.25 ends
                a phrase at Piper's comma and sentence pauses (~0.3 s), as Deepgram's
                endpointing would, and never inside a sentence; 0.35 would keep a whole
                turn in one phrase.  The word error rate is the same either way.
            interim_interval: Least seconds of audio between two interim transcripts.
            vad_mode: webrtc VAD aggressiveness, 0 (loose, keeps soft speech) to 3 (strict).
            language: Only English; this is the language the transcripts carry.
            filler_words: Keep "uh", "um", "mm-hm" and the like in transcripts, as
                Deepgram's option of the same name does; without them, a phrase that is
                only such sounds gives no transcript at all.
        """
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=True))
        if endpoint_silence <= 0:
            raise ValueError("endpoint_silence must be positive")
        if interim_interval < 0:
            raise ValueError("interim_interval must not be negative")
        if vad_mode not in range(4):
            raise ValueError("vad_mode must be 0, 1, 2 or 3")
        self._opts = _STTOptions(
            language=_english(language),
            endpoint_silence=endpoint_silence,
            interim_interval=interim_interval,
            vad_mode=vad_mode,
            filler_words=filler_words,
        )
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._streams = weakref.WeakSet[SpeechStream]()
        self._closed = False

    @property
    def model(self) -> str:
        return "pocketsphinx-en-us"

    @property
    def provider(self) -> str:
        return "pocketsphinx"

    def update_options(
        self,
        *,
        endpoint_silence: NotGivenOr[float] = NOT_GIVEN,
        interim_interval: NotGivenOr[float] = NOT_GIVEN,
    ) -> None:
        """Change the endpointing of this STT and of its open streams."""
        if is_given(endpoint_silence):
            self._opts.endpoint_silence = endpoint_silence
        if is_given(interim_interval):
            self._opts.interim_interval = interim_interval
        for stream in self._streams:
            stream.update_options(
                endpoint_silence=endpoint_silence, interim_interval=interim_interval
            )

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SpeechStream:
        opts = dataclasses.replace(self._opts)
        if is_given(language):
            opts.language = _english(language)
        stream = SpeechStream(stt=self, opts=opts, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        lang = _english(language) if is_given(language) else self._opts.language
        frame = rtc.combine_audio_frames(buffer)
        pcm = mono(frame)
        if frame.sample_rate != SAMPLE_RATE:
            resampler = rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE)
            pcm = _concat([*_push(resampler, pcm, frame.sample_rate), *_flush(resampler)])
        worker = self._acquire()
        try:
            text, confidence = await worker.request(_OP_RECOGNIZE, pcm.tobytes())
            text = _spoken(text, self._opts)
        finally:
            self._release(worker)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=utils.shortuuid("sphinx_"),
            alternatives=[
                stt.SpeechData(
                    language=lang,
                    text=text,
                    end_time=len(pcm) / SAMPLE_RATE,
                    confidence=confidence,
                )
            ],
        )

    def prewarm(self) -> None:
        """Start a worker process so the first stream does not wait ~2 s for one."""
        if not self._idle and not self._closed:
            self._idle.append(self._spawn())

    async def warm_up(self, workers: int = 1) -> None:
        """Have ``workers`` idle worker processes ready to decode."""
        while len(self._idle) < workers and not self._closed:
            self._idle.append(self._spawn())
        await asyncio.gather(*(w.wait_ready() for w in self._idle))

    async def aclose(self) -> None:
        """Close the open streams and end every worker process."""
        self._closed = True
        for stream in list(self._streams):
            if not stream._task.done():  # a finished one may belong to a closed event loop
                await stream.aclose()
        self._idle.clear()
        await asyncio.gather(*(w.aclose() for w in self._workers))
        self._workers.clear()

    def _spawn(self) -> _Worker:
        worker = _Worker()
        self._workers.add(worker)
        return worker

    def _acquire(self) -> _Worker:
        if self._closed:
            raise RuntimeError("SphinxSTT is closed")
        return self._idle.pop() if self._idle else self._spawn()

    def _release(self, worker: _Worker) -> None:
        # A worker still finishing a cancelled request can go back: its thread runs requests
        # in order and START resets the decoder.
        if worker.broken or self._closed:
            worker.close_soon()  # aclose() waits for it
        else:
            self._idle.append(worker)


class SpeechStream(stt.RecognizeStream):
    def __init__(
        self, *, stt: SphinxSTT, opts: _STTOptions, conn_options: APIConnectOptions
    ) -> None:
        # No sample_rate: the base class would resample but not down-mix; _Run does both.
        super().__init__(stt=stt, conn_options=conn_options)
        self._sphinx = stt
        self._opts = opts
        self._request_id = utils.shortuuid("sphinx_")

    def update_options(
        self,
        *,
        endpoint_silence: NotGivenOr[float] = NOT_GIVEN,
        interim_interval: NotGivenOr[float] = NOT_GIVEN,
    ) -> None:
        if is_given(endpoint_silence):
            self._opts.endpoint_silence = endpoint_silence
        if is_given(interim_interval):
            self._opts.interim_interval = interim_interval

    async def _run(self) -> None:
        worker = self._sphinx._acquire()
        run = _Run(self, worker)
        try:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    await run.flush()
                else:
                    await run.push(item)
            await run.flush()
        except APIError:
            run.abandon()  # the next attempt, with another worker, starts afresh
            raise
        finally:
            self._sphinx._release(worker)

    def _send(
        self, kind: stt.SpeechEventType, alternatives: list[stt.SpeechData] | None = None
    ) -> None:
        self._event_ch.send_nowait(
            stt.SpeechEvent(type=kind, request_id=self._request_id, alternatives=alternatives or [])
        )

    def _send_usage(self, seconds: float) -> None:
        self._event_ch.send_nowait(
            stt.SpeechEvent(
                type=stt.SpeechEventType.RECOGNITION_USAGE,
                request_id=self._request_id,
                recognition_usage=stt.RecognitionUsage(audio_duration=seconds),
            )
        )


class _Run:
    """One run of a stream: resampling, segmentation and the phrase being decoded.

    Positions count 16 kHz samples since the run started (the VAD frames' clock).
    """

    def __init__(self, stream: SpeechStream, worker: _Worker) -> None:
        self._stream = stream
        self._opts = stream._opts
        self._worker = worker
        self._vad = Vad(
            mode=self._opts.vad_mode, sample_rate=SAMPLE_RATE, frame_length=_VAD_FRAME / SAMPLE_RATE
        )
        self._resampler: rtc.AudioResampler | None = None
        self._resampler_rate = 0
        self._leftover = np.zeros(0, dtype=np.int16)  # less than a VAD frame
        self._position = 0
        self._recent: deque[Pcm] = deque(maxlen=_PREROLL_FRAMES)
        self._voiced: deque[bool] = deque(maxlen=_ONSET_WINDOW)
        self._unreported = 0.0  # seconds of audio not yet in a RECOGNITION_USAGE
        # the phrase in progress
        self._in_phrase = False
        self._start = 0
        self._last_voiced = 0  # end of the last voiced frame
        self._pending: list[Pcm] = []  # audio not yet sent to the decoder
        self._interim = ""
        self._interim_at: int | None = None  # position of the last interim

    async def push(self, frame: rtc.AudioFrame) -> None:
        self._unreported += frame.duration
        if self._unreported >= _USAGE_PERIOD:
            self._report_usage()
        pcm = mono(frame)
        if frame.sample_rate != SAMPLE_RATE:
            if self._resampler is None or self._resampler_rate != frame.sample_rate:
                self._resampler = rtc.AudioResampler(frame.sample_rate, SAMPLE_RATE)
                self._resampler_rate = frame.sample_rate
            pcm = _concat(_push(self._resampler, pcm, frame.sample_rate))
        await self._consume(pcm)

    async def flush(self) -> None:
        """Finalize the phrase in progress with all the audio pushed so far."""
        if self._resampler is not None:
            await self._consume(_concat(_flush(self._resampler)))
            self._resampler = None  # a fresh one after a flush: no state to reason about
        if self._in_phrase:
            self._pending.append(self._leftover)
            self._position += len(self._leftover)
            self._leftover = self._leftover[:0]
            await self._finish(end_of_speech=True)
        if self._unreported > 0:
            self._report_usage()

    def abandon(self) -> None:
        """End the phrase in progress without a transcript: the worker is gone."""
        if self._in_phrase:
            self._in_phrase = False
            self._stream._send(stt.SpeechEventType.END_OF_SPEECH)

    async def _consume(self, pcm: Pcm) -> None:
        if len(self._leftover):
            pcm = np.concatenate([self._leftover, pcm])
        whole = len(pcm) - len(pcm) % _VAD_FRAME
        for offset in range(0, whole, _VAD_FRAME):
            await self._on_frame(pcm[offset : offset + _VAD_FRAME])
        self._leftover = pcm[whole:]

    async def _on_frame(self, frame: Pcm) -> None:
        loud = float(np.mean(np.square(frame, dtype=np.float32))) >= _FLOOR_POWER
        voiced = bool(self._vad.is_speech(frame.tobytes())) and loud
        self._position += len(frame)
        self._recent.append(frame)
        if not self._in_phrase:
            self._voiced.append(voiced)
            if sum(self._voiced) >= _ONSET_VOICED:
                first = self._voiced.index(True)
                await self._begin(self._position - (len(self._voiced) - first) * _VAD_FRAME)
            return
        self._pending.append(frame)
        if voiced:
            self._last_voiced = self._position
        if self._position - self._last_voiced >= self._opts.endpoint_silence * SAMPLE_RATE:
            await self._finish(end_of_speech=True)
        elif self._position - self._start >= _MAX_PHRASE:
            await self._finish(end_of_speech=False)
        elif len(self._pending) >= _FEED_FRAMES:
            await self._feed()

    async def _begin(self, start: int) -> None:
        self._in_phrase = True
        self._start = start
        self._last_voiced = self._position
        self._pending = list(self._recent)  # the pre-roll and the onset window
        self._voiced.clear()
        self._stream._send(stt.SpeechEventType.START_OF_SPEECH)
        await self._worker.request(_OP_START)
        await self._feed()

    async def _feed(self) -> None:
        text, _ = await self._worker.request(_OP_FEED, self._take_pending())
        text = _spoken(text, self._opts)
        due = (
            self._interim_at is None
            or self._position - self._interim_at >= self._opts.interim_interval * SAMPLE_RATE
        )
        if text and text != self._interim and due:
            self._interim = text
            self._interim_at = self._position
            self._stream._send(
                stt.SpeechEventType.INTERIM_TRANSCRIPT, [self._speech_data(text, self._position)]
            )

    async def _finish(self, *, end_of_speech: bool) -> None:
        text, confidence = await self._worker.request(_OP_END, self._take_pending())
        text = _spoken(text, self._opts)
        voiced = (self._last_voiced - self._start) / SAMPLE_RATE
        if not self._opts.filler_words and voiced < _SHORT_SOUND_S and len(text.split()) <= 1:
            # pocketsphinx makes a short non-word ("um", "mm-hm", a cough) into a random
            # word ("and", "the man"); Deepgram without filler words gives nothing for it
            text = ""
        if text:
            self._stream._send(
                stt.SpeechEventType.FINAL_TRANSCRIPT,
                [self._speech_data(text, self._last_voiced, confidence)],
            )
        self._interim = ""
        self._interim_at = None
        if end_of_speech:
            self._in_phrase = False
            self._stream._send(stt.SpeechEventType.END_OF_SPEECH)
        else:
            self._start = self._position
            await self._worker.request(_OP_START)

    def _take_pending(self) -> bytes:
        pcm = _concat(self._pending).tobytes()
        self._pending = []
        return pcm

    def _speech_data(self, text: str, end: int, confidence: float = 0.0) -> stt.SpeechData:
        offset = self._stream.start_time_offset
        return stt.SpeechData(
            language=self._opts.language,
            text=text,
            start_time=offset + self._start / SAMPLE_RATE,
            end_time=offset + end / SAMPLE_RATE,
            confidence=confidence,
        )

    def _report_usage(self) -> None:
        self._stream._send_usage(self._unreported)
        self._unreported = 0.0


class _Worker:
    """One decoder process, driven by a thread of its own that runs requests in order.

    A request cancelled before its turn never reaches the process; one cancelled while
    running completes in the thread, so requests and replies never get out of step.
    """

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sphinx-stt")
        self._ready = self._thread.submit(self._call, _OP_PING, b"")
        self._closed: Future[None] | None = None
        self.broken = False
        logger.debug("pocketsphinx worker %d started", self._process.pid)

    async def wait_ready(self) -> None:
        try:
            await asyncio.wrap_future(self._ready)
        except (OSError, EOFError) as e:
            self.broken = True
            raise APIConnectionError("pocketsphinx worker failed to start") from e

    async def request(self, op: int, payload: bytes = b"") -> tuple[str, float]:
        try:
            return await asyncio.wrap_future(self._thread.submit(self._call, op, payload))
        except (OSError, EOFError) as e:  # the process is gone
            self.broken = True
            raise APIConnectionError("pocketsphinx worker exited") from e

    def close_soon(self) -> Future[None]:
        """End the process after the requests already submitted (idempotent)."""
        if self._closed is None:
            self._closed = self._thread.submit(self._shutdown)
            self._thread.shutdown(wait=False)
        return self._closed

    async def aclose(self) -> None:
        await asyncio.wrap_future(self.close_soon())

    def _call(self, op: int, payload: bytes) -> tuple[str, float]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(_REQUEST.pack(op, len(payload)) + payload)
        stdin.flush()
        header = _read_exact(stdout, _REPLY.size)
        confidence, size = _REPLY.unpack(header)
        return _read_exact(stdout, size).decode(), confidence

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):  # a dead process leaves unflushed bytes
            if self._process.stdin is not None:
                self._process.stdin.close()  # the process exits at end of input
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        logger.debug("pocketsphinx worker %d exited", self._process.pid)


def _serve() -> None:
    """A worker process's main: one decoder; requests on stdin, replies on stdout, to EOF."""
    from pocketsphinx import Decoder

    requests = sys.stdin.buffer
    # Replies go to a private copy of stdout and fd 1 to stderr: nothing a library prints can
    # corrupt the protocol.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    decoder = Decoder(**_DECODER_CONFIG)
    in_utterance = False
    while True:
        try:
            op, size = _REQUEST.unpack(_read_exact(requests, _REQUEST.size))
            pcm = _read_exact(requests, size)
        except EOFError:
            return
        text, confidence = "", 0.0
        if op in (_OP_START, _OP_RECOGNIZE) and in_utterance:
            decoder.end_utt()  # a phrase its stream abandoned
            in_utterance = False
        if op in (_OP_START, _OP_FEED, _OP_END, _OP_RECOGNIZE) and not in_utterance:
            decoder.start_utt()
            in_utterance = True
        if op in (_OP_FEED, _OP_END, _OP_RECOGNIZE) and pcm:
            decoder.process_raw(pcm, False, op == _OP_RECOGNIZE)
        if op in (_OP_END, _OP_RECOGNIZE):
            decoder.end_utt()
            in_utterance = False
            confidence = _confidence(decoder)
        if op in (_OP_FEED, _OP_END, _OP_RECOGNIZE):
            hypothesis = decoder.hyp()
            text = hypothesis.hypstr if hypothesis is not None else ""
        data = text.encode()
        replies.write(_REPLY.pack(confidence, len(data)) + data)
        replies.flush()


def _spoken(text: str, opts: _STTOptions) -> str:
    """The transcript as the options want it: with or without filler words."""
    if opts.filler_words:
        return text
    return " ".join(w for w in text.split() if w.lower() not in FILLERS)


def _confidence(decoder: Any) -> float:
    """Mean posterior of the words in the final hypothesis (0 for none)."""
    probs = [
        min(float(seg.prob), 1.0)
        for seg in decoder.seg()
        if seg.word not in _NOT_WORDS and not seg.word.startswith(("[", "+"))
    ]
    return sum(probs) / len(probs) if probs else 0.0


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size) if size else b""
    if len(data) < size:
        raise EOFError("pocketsphinx worker pipe closed")
    return data


def _english(language: str) -> LanguageCode:
    code = LanguageCode(language)
    if code.language != "en":
        raise ValueError("pocketsphinx's bundled model is US English only")
    return code


def _push(resampler: rtc.AudioResampler, pcm: Pcm, rate: int) -> list[Pcm]:
    frames = resampler.push(rtc.AudioFrame(pcm.tobytes(), rate, 1, len(pcm)))
    return [np.frombuffer(f.data, dtype=np.int16) for f in frames]


def _flush(resampler: rtc.AudioResampler) -> list[Pcm]:
    return [np.frombuffer(f.data, dtype=np.int16) for f in resampler.flush()]


def _concat(parts: list[Pcm]) -> Pcm:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
