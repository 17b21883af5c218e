"""What the server needs from a synthesis engine: its voices, each able to render a segment.

An engine loads its voices once, at start-up, and renders in worker threads (its
``executor``); everything else (admission, scheduling, framing, formats) is the server's and
the same for every engine.  Piper (:mod:`.piper`) is the one engine today.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from ..audio import StreamResampler
from ..timestamps import TimedWord


@dataclass(frozen=True)
class RenderedSegment:
    pcm: bytes
    """s16le at the request's rate."""
    native_seconds: float
    """Length of the segment, pause included, on the voice's own timeline."""
    words: tuple[TimedWord, ...]
    """Seconds from the segment's start (empty unless asked for)."""
    estimated: bool
    """The word times are estimates, not the engine's alignment."""
    compute_seconds: float


class Voice(Protocol):
    """One loaded voice."""

    @property
    def name(self) -> str: ...

    @property
    def sample_rate(self) -> int:
        """Its native rate: requests at other rates go through the request's resampler."""
        ...

    @property
    def language(self) -> str | None: ...

    @property
    def has_alignments(self) -> bool:
        """Whether its word times come from the model (else they are estimated)."""
        ...

    @property
    def bundled(self) -> bool:
        """Whether it ships with the server (rather than loaded from a path)."""
        ...

    def render(
        self,
        text: str,
        *,
        resampler: StreamResampler,
        pause_after: float,
        inner_pause: float,
        last: bool,
        with_words: bool,
        speed: float = 1.0,
    ) -> RenderedSegment:
        """Synthesize one segment, shaped for the wire.  Called in the engine's executor.

        ``pause_after``: silence after it; ``inner_pause``: silence at a sentence end found
        inside it; ``last``: the request's last segment (the resampler flushes); ``speed``:
        the pace of speech against the server's own (2.0: twice as fast)."""
        ...


class Engine(Protocol):
    """The loaded voices and the threads that synthesize."""

    @property
    def voices(self) -> Mapping[str, Voice]: ...

    @property
    def workers(self) -> int:
        """Segments it synthesizes at once."""
        ...

    @property
    def executor(self) -> Executor: ...

    def close(self) -> None: ...
