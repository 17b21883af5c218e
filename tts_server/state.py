"""What all connections of one server share: its settings, engine, limits and metrics.

One :class:`ServerState` per app (``tts_server.app`` builds it); each connection's
:class:`~tts_server.session.Session` holds it and registers itself in ``sessions``, each HTTP
speech request (:class:`~tts_server.http_speech.HttpSpeech`) in ``speeches``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import knowlithic_protocol as protocol

from .admission import Capacity, RateLimiter, Streams
from .config import ServerConfig
from .engines import Engine, Voice
from .headroom import Headroom
from .metrics import Metrics
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .http_speech import HttpSpeech
    from .session import Session

# the output rates a request may ask for (the voice's audio is resampled to it)
SAMPLE_RATES: Final = (8000, 16000, 22050, 24000, 44100, 48000)
# A reply's first segment, in characters, when no reply is at hand (/health, /metrics): a
# first clause split off a sentence (text.py) is mostly 20-60.
_TYPICAL_FIRST_SEGMENT: Final = 50


@dataclass
class ServerState:
    """What all connections of one app share."""

    config: ServerConfig
    engine: Engine
    scheduler: Scheduler
    capacity: Capacity
    streams: Streams
    headroom: Headroom
    rate_limiter: RateLimiter
    metrics: Metrics
    sessions: set[Session] = field(default_factory=set)
    speeches: set[HttpSpeech] = field(default_factory=set)  # POST /v1/audio/speech in flight
    shutting_down: bool = False
    aliases: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics.active_streams.set_function(lambda: self.streams.active)
        headroom, metrics = self.headroom, self.metrics
        metrics.utilization.set_function(lambda: headroom.utilization)
        metrics.seconds_per_character.set_function(lambda: headroom.cost)
        metrics.loop_lag.set_function(lambda: headroom.lag)
        metrics.predicted_first_audio.set_function(lambda: self.predicted_first_audio)
        self.aliases = dict(self.config.aliases)
        for alias, target in self.aliases.items():
            if target not in self.engine.voices or alias in self.engine.voices:
                raise ValueError(f"alias {alias!r} → {target!r} does not name a loaded voice")

    def resolve(self, name: str) -> Voice | None:
        """The voice called ``name`` (case-insensitive, aliases included); never a fallback."""
        key = name.strip().lower()
        return self.engine.voices.get(self.aliases.get(key, key))

    @property
    def capped(self) -> bool:
        """Whether a hard cap refuses a new stream (idle streams yield their place)."""
        return self.streams.full or self.capacity.full

    @property
    def predicted_first_audio(self) -> float:
        """Seconds a new reply of typical length would wait for its first audio now."""
        return self.headroom.forecast([_TYPICAL_FIRST_SEGMENT], [0.0]).first_audio

    @property
    def full(self) -> bool:
        """Whether a new reply of typical length would be refused with busy."""
        return self.capped or not self.headroom.ready_for(_TYPICAL_FIRST_SEGMENT)

    @property
    def voice_names(self) -> tuple[str, ...]:
        return tuple(sorted([*self.engine.voices, *self.aliases]))

    def describe_voices(self) -> list[dict[str, Any]]:
        return [
            {
                "name": voice.name,
                "sample_rate": voice.sample_rate,
                "aliases": sorted(a for a, t in self.aliases.items() if t == voice.name),
                "language": voice.language,
                "word_timestamps": "aligned" if voice.has_alignments else "estimated",
                "bundled": voice.bundled,
            }
            for voice in self.engine.voices.values()
        ]

    def capabilities(self) -> protocol.Capabilities:
        return protocol.Capabilities(
            protocol_version=protocol.PROTOCOL_VERSION,
            voices=self.voice_names,
            output_formats=protocol.OUTPUT_FORMATS,
            sample_rates=SAMPLE_RATES,
            word_timestamps=True,
            max_text_length=self.config.max_text_length,
            max_requests_in_flight=self.config.max_requests_per_connection,
        )
