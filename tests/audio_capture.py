"""An ``AudioOutput`` that records what an ``AgentSession`` would play, with no room."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from livekit import rtc
from livekit.agents.voice.io import AudioOutput, AudioOutputCapabilities


@dataclass
class Segment:
    started_at: float
    frames: list[rtc.AudioFrame] = field(default_factory=list)
    interrupted: bool = False
    played: float = 0.0

    @property
    def pcm(self) -> bytes:
        return b"".join(f.data.tobytes() for f in self.frames)

    @property
    def duration(self) -> float:
        return sum(f.duration for f in self.frames)


class CapturingAudioOutput(AudioOutput):
    """Records frames and "plays" them in real time from the first frame of a segment.

    A segment ends as played once its audio has had time to play after flush(), or as
    interrupted if clear_buffer() comes first, as with a real speaker.  With
    ``realtime=False`` it plays everything the moment it is flushed (for benchmarks).
    """

    def __init__(self, *, sample_rate: int | None = None, realtime: bool = True) -> None:
        super().__init__(
            label="capture",
            capabilities=AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate,
        )
        self.segments: list[Segment] = []
        self._realtime = realtime
        self._current: Segment | None = None
        self._playout: asyncio.TimerHandle | None = None

    @property
    def playing(self) -> bool:
        return self._current is not None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._current is None:
            self._current = Segment(started_at=time.perf_counter())
            self.on_playback_started(created_at=time.time())
        self._current.frames.append(frame)

    def flush(self) -> None:
        super().flush()
        if self._current is None:
            return
        remaining = self._current.started_at + self._current.duration - time.perf_counter()
        if not self._realtime:
            remaining = 0.0
        self._playout = asyncio.get_running_loop().call_later(
            max(0.0, remaining), self._finish, False
        )

    def clear_buffer(self) -> None:
        self._finish(True)

    def _finish(self, interrupted: bool) -> None:
        if self._playout is not None:
            self._playout.cancel()
            self._playout = None
        segment, self._current = self._current, None
        if segment is None:
            return
        segment.interrupted = interrupted
        elapsed = time.perf_counter() - segment.started_at
        segment.played = min(elapsed, segment.duration)
        self.segments.append(segment)
        self.on_playback_finished(playback_position=segment.played, interrupted=interrupted)
