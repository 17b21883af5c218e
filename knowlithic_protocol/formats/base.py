"""What every audio payload format provides: an encoder for servers, a decoder for clients.

A format turns one request's 16-bit mono PCM into the payloads of its audio messages and
back.  Both sides are sans-I/O and stateful per request: they are fed in order and keep
whatever a message boundary split (a sample, a header, an Ogg page) for the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class AudioFormatError(ValueError):
    """A payload is audio this decoder cannot play (a broken header, a corrupt page)."""


@dataclass(frozen=True)
class PcmChunk:
    """Interleaved s16le samples; ``len(pcm)`` is always a whole number of frames."""

    pcm: bytes
    sample_rate: int
    num_channels: int


class AudioEncoder(Protocol):
    """One request's audio, from s16le mono PCM to message payloads (server side)."""

    @property
    def sample_rate(self) -> int:
        """The rate the payloads carry (a format may not offer the rate asked for)."""
        ...

    def encode(self, pcm: bytes, *, last: bool = False) -> bytes:
        """The payload for the next message: may be empty while too little is buffered to
        form a unit of the format; ``last`` flushes everything held back."""
        ...


class AudioDecoder(Protocol):
    """One request's message payloads, back to PCM (client side)."""

    @property
    def pending_bytes(self) -> int:
        """Bytes held back until more arrive (a split sample, page or header)."""
        ...

    def feed(self, payload: bytes, *, sample_rate: int | None = None) -> PcmChunk | None:
        """Decode the next message's payload; ``sample_rate`` is the rate the message states.
        Raises :class:`AudioFormatError` for a payload that cannot be audio."""
        ...

    def finish(self) -> PcmChunk | None:
        """The request ended: the last audio held back, if any.  Raises
        :class:`AudioFormatError` when what is held back cannot be audio (a truncated page);
        a split sample at the very end is dropped."""
        ...
