"""Room stand-ins for running a whole call through a real ``AgentSession``, with no room.

``CallerAudioInput`` feeds the caller's speech to the session in real time and
``ListenerAudioOutput`` "plays" the agent's speech like a speaker would.  Both record onto
one ``Timeline``: the call as the caller heard it, 16 kHz, caller left and agent right.

All times are ``time.monotonic()`` (which is also the event loop's clock), so deadlines and
timers here and the timeline's samples share one clock.
"""

from __future__ import annotations

import asyncio
import math
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from livekit import rtc
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities

SAMPLE_RATE = 16000
"""The timeline's rate; each channel is mono int16 at this rate."""
FRAME_SECONDS = 0.02

Pcm = npt.NDArray[np.int16]


def resample(pcm: Pcm, from_rate: int, to_rate: int) -> Pcm:
    """Resample a whole mono clip at once (soxr: no delay, the tail comes with the flush)."""
    if from_rate == to_rate or not len(pcm):
        return pcm
    resampler = rtc.AudioResampler(input_rate=from_rate, output_rate=to_rate, num_channels=1)
    frames = resampler.push(rtc.AudioFrame(pcm.tobytes(), from_rate, 1, len(pcm)))
    frames += resampler.flush()
    return _concat([mono(f) for f in frames])


def mono(frame: rtc.AudioFrame) -> Pcm:
    """The frame's samples, mixed down to one channel."""
    data = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels == 1:
        return data
    mixed: Pcm = data.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
    return mixed


def _concat(parts: list[Pcm]) -> Pcm:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


class _Channel:
    """A growing int16 buffer written at absolute sample offsets."""

    def __init__(self) -> None:
        self._buf = np.zeros(SAMPLE_RATE * 60, dtype=np.int16)
        self.length = 0

    def write(self, offset: int, pcm: Pcm) -> None:
        end = offset + len(pcm)
        if end > len(self._buf):
            # doubling keeps appends amortised O(1); a 10-minute call is ~19 MB a channel
            grown = np.zeros(max(end, 2 * len(self._buf)), dtype=np.int16)
            grown[: self.length] = self._buf[: self.length]
            self._buf = grown
        self._buf[offset:end] = pcm
        self.length = max(self.length, end)

    def view(self) -> Pcm:
        view = self._buf[: self.length]
        view.flags.writeable = False
        return view


class Timeline:
    """One clock for the call and what each side heard on it.

    ``caller`` holds what was fed to the agent, ``agent`` what the caller would have heard,
    each at the sample offset (16 kHz from ``t0``) where it happened; gaps are silence.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        self._t0: float | None = None
        self._caller = _Channel()
        self._agent = _Channel()

    def start(self) -> None:
        """Start the clock; later calls keep the first ``t0`` (the I/O classes call it too)."""
        if self._t0 is None:
            self._t0 = time.monotonic()

    @property
    def started(self) -> bool:
        return self._t0 is not None

    @property
    def t0(self) -> float:
        """``time.monotonic()`` at ``start()``."""
        if self._t0 is None:
            raise RuntimeError("the timeline has not been started")
        return self._t0

    def now(self) -> float:
        """Seconds since ``t0``."""
        return time.monotonic() - self.t0

    def offset_at(self, monotonic: float) -> int:
        """The sample index of a ``time.monotonic()`` instant."""
        return round((monotonic - self.t0) * SAMPLE_RATE)

    @property
    def caller(self) -> Pcm:
        """The caller channel so far (read-only view)."""
        return self._caller.view()

    @property
    def agent(self) -> Pcm:
        """The agent channel so far (read-only view)."""
        return self._agent.view()

    def write_caller(self, offset: int, pcm: Pcm) -> None:
        self._caller.write(offset, pcm)

    def extend_caller(self, end: int) -> None:
        """Grow the caller channel with silence up to sample ``end``, overwriting nothing."""
        self._caller.write(end, np.zeros(0, dtype=np.int16))

    def write_agent(self, offset: int, pcm: Pcm) -> None:
        self._agent.write(offset, pcm)

    @property
    def duration(self) -> float:
        """Seconds recorded: the longer channel."""
        return max(self._caller.length, self._agent.length) / SAMPLE_RATE

    def samples(self) -> npt.NDArray[np.int16]:
        """Both channels, zero-padded to the same length: shape (n, 2), caller first."""
        out = np.zeros((max(self._caller.length, self._agent.length), 2), dtype=np.int16)
        out[: self._caller.length, 0] = self._caller.view()
        out[: self._agent.length, 1] = self._agent.view()
        return out

    def write_wav(self, path: str | Path) -> None:
        """A stereo 16-bit WAV at 16 kHz: left the caller, right the agent."""
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(SAMPLE_RATE)
            wav.writeframes(self.samples().astype("<i2").tobytes())


@dataclass
class Clip:
    """One ``say()`` as fed: timeline seconds of its first sample and just past its last."""

    start: float
    end: float
    offset: int
    """Timeline sample of its first sample."""
    samples: int
    """Its length in timeline (16 kHz) samples."""


@dataclass(eq=False)  # identity: it holds arrays, and lists look it up
class _QueuedClip:
    feed: Pcm  # at the input's rate, what the session is given
    record: Pcm  # at 16 kHz, what the timeline gets
    done: asyncio.Future[None]
    pos: int = 0
    offset: int = 0


class CallerAudioInput(AudioInput):
    """The caller's microphone: 20 ms mono frames in real time, silence between clips.

    Frame ``n`` is due at ``t0 + n * 0.02`` on the timeline's clock and covers timeline
    samples ``[n * 320, (n + 1) * 320)``.  Deadlines are absolute, so sleep jitter never
    accumulates; a consumer that falls behind gets the late frames at once, none skipped.
    """

    def __init__(
        self, timeline: Timeline, *, sample_rate: int = SAMPLE_RATE, label: str = "CallerAudio"
    ) -> None:
        super().__init__(label=label)
        if sample_rate % 50:
            raise ValueError("the sample rate must hold a whole number of samples per 20 ms")
        self._timeline = timeline
        self._rate = sample_rate
        self._frame_samples = sample_rate // 50
        self._next: int | None = None  # index of the next frame to yield
        self._queue: deque[_QueuedClip] = deque()
        self._current: _QueuedClip | None = None
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self.clips: list[Clip] = []
        """Every clip fed completely, in order."""
        self.frames = 0
        """Frames yielded so far."""
        self.max_lag = 0.0
        """The latest any frame was yielded after its deadline, in seconds."""

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def speaking(self) -> bool:
        """True from ``say()`` until its clip (and any queued after it) has been fed."""
        return self._current is not None or bool(self._queue)

    async def say(self, pcm: bytes, sample_rate: int) -> None:
        """Speak a mono s16le clip, starting at the next frame; return once all of it is fed.

        Clips said while another plays are queued behind it.
        """
        if self._closed:
            raise RuntimeError("the caller input is closed")
        clip = np.frombuffer(pcm, dtype=np.int16)
        if not len(clip):
            return
        feed = resample(clip, sample_rate, self._rate)
        # at 16 kHz the timeline gets the very samples fed (resampling is not deterministic)
        record = feed if self._rate == SAMPLE_RATE else resample(clip, sample_rate, SAMPLE_RATE)
        queued = _QueuedClip(
            feed=feed, record=record, done=asyncio.get_running_loop().create_future()
        )
        self._queue.append(queued)
        try:
            await queued.done
        except asyncio.CancelledError:
            # a clip not yet started can be taken back; one already playing is heard out
            if queued in self._queue:
                self._queue.remove(queued)
            raise

    async def aclose(self) -> None:
        """End iteration: a pending ``__anext__`` raises ``StopAsyncIteration``."""
        self._closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        error = RuntimeError("the caller input closed before the clip was fed")
        for clip in [*([self._current] if self._current else []), *self._queue]:
            if not clip.done.done():
                clip.done.set_exception(error)
                clip.done.exception()  # retrieved: no "never retrieved" noise if unawaited
        self._current = None
        self._queue.clear()

    async def __anext__(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        self._timeline.start()
        t0 = self._timeline.t0
        if self._next is None:
            # start with the frame due now, rather than replaying the call so far
            self._next = math.floor(round((time.monotonic() - t0) / FRAME_SECONDS, 6))
        deadline = t0 + self._next * FRAME_SECONDS
        delay = deadline - time.monotonic()
        if delay > 0:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timer = loop.call_later(delay, _resolve, self._waiter)
            try:
                await self._waiter
            finally:
                # nothing has changed yet, so a cancelled wait (input swapped) loses no frame
                timer.cancel()
                self._waiter = None
            if self._closed:
                raise StopAsyncIteration
        self.max_lag = max(self.max_lag, time.monotonic() - deadline)
        frame = self._frame(self._next)
        self._next += 1
        self.frames += 1
        return frame

    def _frame(self, n: int) -> rtc.AudioFrame:
        buf = np.zeros(self._frame_samples, dtype=np.int16)
        offset = n * SAMPLE_RATE // 50
        self._timeline.extend_caller(offset + SAMPLE_RATE // 50)
        if self._current is None and self._queue:
            self._current = self._queue.popleft()
            self._current.offset = offset
        clip = self._current
        if clip is not None:
            take = min(self._frame_samples, len(clip.feed) - clip.pos)
            buf[:take] = clip.feed[clip.pos : clip.pos + take]
            # the 16 kHz copy follows the fed one in proportion, at its own offsets (at 16 kHz
            # the two are the same samples)
            a = clip.pos * len(clip.record) // len(clip.feed)
            clip.pos += take
            b = clip.pos * len(clip.record) // len(clip.feed)
            self._timeline.write_caller(clip.offset + a, clip.record[a:b])
            if clip.pos == len(clip.feed):
                # a clip ends mid-frame as silence; the next one starts on the next frame
                self._current = None
                self.clips.append(
                    Clip(
                        start=clip.offset / SAMPLE_RATE,
                        end=(clip.offset + len(clip.record)) / SAMPLE_RATE,
                        offset=clip.offset,
                        samples=len(clip.record),
                    )
                )
                if not clip.done.done():
                    clip.done.set_result(None)
        return rtc.AudioFrame(buf.tobytes(), self._rate, 1, self._frame_samples)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@dataclass
class PlayedSegment:
    """One playback segment (``capture_frame``s up to ``flush``) as the caller heard it."""

    start: float | None
    """Timeline seconds its first sample played; None if none did."""
    end: float | None
    """Timeline seconds just past its last heard sample; None if none played."""
    interrupted: bool
    heard: float
    """Seconds of it that played (the ``playback_position`` reported)."""
    duration: float
    """Seconds of it captured."""


@dataclass(eq=False)
class _Run:
    """A stretch of a segment played without a break: no underrun, pause or cut."""

    start: float  # monotonic time its first sample plays
    offset: int  # timeline sample of that moment
    seg_offset: float  # where it starts in the segment, in seconds
    length: float  # seconds

    @property
    def end(self) -> float:
        return self.start + self.length

    @property
    def offset_end(self) -> int:
        return self.offset + _samples(self.seg_offset + self.length) - _samples(self.seg_offset)


def _samples(seconds: float) -> int:
    # one mapping for every boundary, so adjacent runs tile the segment's audio exactly
    return round(seconds * SAMPLE_RATE)


@dataclass(eq=False)  # identity: it holds arrays, and lists look it up
class _Segment:
    captured: float = 0.0  # seconds
    pending: float = 0.0  # captured while paused: the unscheduled tail
    flushed: bool = False
    started: bool = False  # playback_started emitted
    runs: list[_Run] = field(default_factory=list)
    pcm: list[Pcm] = field(default_factory=list)  # at 16 kHz
    rate: int = 0
    resampler: rtc.AudioResampler | None = None

    def add(self, frame: rtc.AudioFrame) -> None:
        if frame.sample_rate != self.rate:
            self._flush_resampler()
            self.rate = frame.sample_rate
            if self.rate != SAMPLE_RATE:
                self.resampler = rtc.AudioResampler(
                    input_rate=self.rate, output_rate=SAMPLE_RATE, num_channels=1
                )
        pcm = mono(frame)
        if self.resampler is None:
            self.pcm.append(pcm.copy())
        else:
            single = rtc.AudioFrame(pcm.tobytes(), self.rate, 1, len(pcm))
            self.pcm.extend(mono(f).copy() for f in self.resampler.push(single))

    def audio(self) -> Pcm:
        self._flush_resampler()
        return _concat(self.pcm)

    def _flush_resampler(self) -> None:
        if self.resampler is not None:
            self.pcm.extend(mono(f).copy() for f in self.resampler.flush())
            self.resampler = None


class ListenerAudioOutput(AudioOutput):
    """The caller's speaker: "plays" the agent's audio in real time by keeping time.

    A segment's first frame plays when captured, or when the audio before it ends if that
    is later; the rest follows back to back, with silence where the audio came too late
    (an underrun).  ``flush()`` ends the segment once its audio has played out,
    ``clear_buffer()`` stops everything at once, and ``pause()``/``resume()`` hold the
    playhead and carry on from the same sample.  Only what was heard is recorded, on the
    timeline's agent channel where it played; ``capture_frame`` never blocks, like the room
    output, whose frames queue unbounded in front of its 200 ms source.
    """

    def __init__(self, timeline: Timeline, *, label: str = "ListenerAudio") -> None:
        # any rate is accepted: playback_position stays in the TTS's own seconds
        super().__init__(
            label=label, capabilities=AudioOutputCapabilities(pause=True), sample_rate=None
        )
        self._timeline = timeline
        self._open: list[_Segment] = []  # not yet finished, in playout order
        self._capturing: _Segment | None = None
        self._dropping = False  # cleared mid-capture: drop the segment's frames until flush
        self._paused = False
        self._last: _Run | None = None  # the run that ends last, to continue it seamlessly
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.segments: list[PlayedSegment] = []
        """Every finished segment, in order."""

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def busy(self) -> bool:
        """True from a segment's first captured frame until it has played out or been cut,
        pauses and underruns included: a reply in progress."""
        return bool(self._open)

    @property
    def playing(self) -> bool:
        """True while agent audio is sounding right now."""
        now = time.monotonic()
        return any(r.start <= now < r.end for s in self._open for r in s.runs)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._dropping:
            return
        self._timeline.start()
        seg = self._capturing
        if seg is None:
            seg = self._capturing = _Segment()
            self._open.append(seg)
        seg.add(frame)
        duration = frame.samples_per_channel / frame.sample_rate
        seg.captured += duration
        if self._paused:
            seg.pending += duration
        else:
            self._schedule(seg, duration, time.monotonic())
        self._arm()

    def flush(self) -> None:
        super().flush()
        if self._dropping:
            self._dropping = False
            return
        seg, self._capturing = self._capturing, None
        if seg is None:
            return  # nothing captured: the base class counted no segment either
        seg.flushed = True
        self._advance(time.monotonic())

    def clear_buffer(self) -> None:
        now = time.monotonic()
        self._process(now)  # what was due by now happened (started events included)
        self._cut(now)
        if self._capturing is not None:
            # the base class ends this segment only at flush(); its later frames are dropped
            self._capturing = None
            self._dropping = True
        for seg in list(self._open):
            self._finish(seg, interrupted=True)
        self._arm()

    def pause(self) -> None:
        super().pause()
        if self._paused:
            return
        now = time.monotonic()
        self._process(now)
        self._cut(now)
        self._paused = True
        self._arm()

    def resume(self) -> None:
        super().resume()
        if not self._paused:
            return  # the session calls resume() before every reply: it must be a no-op
        self._paused = False
        now = time.monotonic()
        for seg in self._open:
            if seg.pending:
                self._schedule(seg, seg.pending, now)
                seg.pending = 0.0
        self._advance(now)

    # the schedule

    def _schedule(self, seg: _Segment, duration: float, now: float) -> None:
        """Queue ``duration`` more seconds of ``seg`` behind whatever is already playing."""
        if duration <= 0:
            return
        last = self._last
        if last is not None and last.end >= now:
            if seg.runs and seg.runs[-1] is last:
                last.length += duration
                return
            start, offset = last.end, last.offset_end  # gapless: sample-exact on the timeline
        else:
            start, offset = now, self._timeline.offset_at(now)
        scheduled = sum(r.length for r in seg.runs)
        self._last = _Run(start=start, offset=offset, seg_offset=scheduled, length=duration)
        seg.runs.append(self._last)

    def _cut(self, now: float) -> None:
        """Stop the playhead at ``now``: what was to play later goes back to pending."""
        for seg in self._open:
            kept: list[_Run] = []
            for run in seg.runs:
                if run.end > now:
                    seg.pending += run.end - max(run.start, now)
                    run.length = now - run.start
                if run.length > 0:
                    kept.append(run)
            seg.runs = kept
        self._last = next((s.runs[-1] for s in reversed(self._open) if s.runs), None)

    def _advance(self, now: float) -> None:
        self._process(now)
        self._arm()

    def _process(self, now: float) -> None:
        """Emit what has happened by ``now``: segments starting, segments played out."""
        # in playout order, so one segment's end is reported before the next one's start
        for seg in list(self._open):
            if not seg.started and seg.runs and seg.runs[0].start <= now:
                seg.started = True
                self.on_playback_started(created_at=_wall(seg.runs[0].start))
            if seg is self._open[0] and self._played_out(seg, now):
                self._finish(seg, interrupted=False)

    def _played_out(self, seg: _Segment, now: float) -> bool:
        return (
            seg.flushed
            and not self._paused
            and not seg.pending
            and (not seg.runs or seg.runs[-1].end <= now)
        )

    def _next_event(self) -> float | None:
        times = [s.runs[0].start for s in self._open if not s.started and s.runs]
        head = self._open[0] if self._open else None
        if head is not None and head.flushed and not self._paused and not head.pending:
            times.append(head.runs[-1].end if head.runs else time.monotonic())
        return min(times, default=None)

    def _arm(self) -> None:
        when = self._next_event()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            delay = max(0.0, when - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        # a timer may fire a hair early: _process only does what is due, _arm re-arms
        self._timer = None
        self._timer_at = None
        self._advance(time.monotonic())

    def _finish(self, seg: _Segment, *, interrupted: bool) -> None:
        self._open.remove(seg)
        audio = seg.audio()
        for run in seg.runs:
            a, b = _samples(run.seg_offset), _samples(run.seg_offset + run.length)
            self._timeline.write_agent(run.offset, audio[a:b])
        heard = sum(r.length for r in seg.runs)
        first, last = (seg.runs[0], seg.runs[-1]) if seg.runs else (None, None)
        self.segments.append(
            PlayedSegment(
                start=first.offset / SAMPLE_RATE if first else None,
                end=last.offset_end / SAMPLE_RATE if last else None,
                interrupted=interrupted,
                heard=heard,
                duration=seg.captured,
            )
        )
        # every run is final now, so it can be reported without ever being revised
        for run in seg.runs:
            self.on_playback_progressed(
                started_at=_wall(run.start), offset=run.seg_offset, duration=run.length
            )
        self.on_playback_finished(playback_position=heard, interrupted=interrupted)


def _wall(monotonic: float) -> float:
    """The ``time.time()`` of a ``time.monotonic()`` instant (events carry wall time)."""
    return time.time() - (time.monotonic() - monotonic)
