"""The audio payload formats, and the one place each is registered: PCM, WAV, Ogg Opus, MP3.

A new format is one module with an encoder and a decoder, plus one entry in ``_FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, get_args

from .base import AudioDecoder, AudioEncoder, AudioFormatError, PcmChunk
from .pcm import PcmEncoder
from .wav import WavDecoder, WavEncoder

OutputFormat: TypeAlias = Literal["pcm", "wav", "opus", "mp3"]


@dataclass(frozen=True)
class Format:
    name: OutputFormat
    new_encoder: Callable[[int, int | None], AudioEncoder]  # the request's rate and bit rate
    new_decoder: Callable[[int], AudioDecoder]  # the rate asked for
    # every server takes it (legacy ones included); else a client asks for it only from a
    # server whose capabilities list it
    universal: bool = True
    # audio per message, if not the server's usual: every message costs a frame header (and
    # for Opus an Ogg page header), ~110 bytes, which at 25 messages a second would be half
    # of Opus's own bit rate.  The audio is rendered ahead, so larger messages delay nothing.
    message_ms: int | None = None


def _wav_decoder(rate: int) -> AudioDecoder:
    # servers label raw PCM as WAV and WAV as PCM; the decoder takes both, whatever was asked
    return WavDecoder(sample_rate=rate)


def _opus_encoder(rate: int, bitrate: int | None) -> AudioEncoder:
    from .opus import OpusEncoder  # noqa: PLC0415 - PyAV loads in ~0.1 s: only when used

    return OpusEncoder(sample_rate=rate, bitrate=bitrate)


def _opus_decoder(rate: int) -> AudioDecoder:
    from .opus import OpusDecoder  # noqa: PLC0415

    return OpusDecoder(sample_rate=rate)


def _mp3_encoder(rate: int, bitrate: int | None) -> AudioEncoder:
    from .mp3 import Mp3Encoder  # noqa: PLC0415 - PyAV, as for Opus

    # its own bit rate: the server's default (--opus-bitrate) is Opus's, too low for MP3
    return Mp3Encoder(sample_rate=rate)


def _mp3_decoder(rate: int) -> AudioDecoder:
    from .mp3 import Mp3Decoder  # noqa: PLC0415

    return Mp3Decoder(sample_rate=rate)


_FORMATS: Final[dict[str, Format]] = {
    "pcm": Format("pcm", lambda rate, _: PcmEncoder(sample_rate=rate), _wav_decoder),
    "wav": Format("wav", lambda rate, _: WavEncoder(sample_rate=rate), _wav_decoder),
    # legacy servers know nothing of it: asked for only where the capabilities list it
    "opus": Format("opus", _opus_encoder, _opus_decoder, universal=False, message_ms=200),
    # for OpenAI's clients (its API's default format); no message holds less than a frame
    "mp3": Format("mp3", _mp3_encoder, _mp3_decoder, universal=False, message_ms=200),
}
OUTPUT_FORMATS: Final[tuple[OutputFormat, ...]] = get_args(OutputFormat)


def get(name: str) -> Format:
    """The registered format ``name``; :class:`KeyError` for one this package does not know."""
    return _FORMATS[name]


def new_encoder(name: str, *, sample_rate: int, bitrate: int | None = None) -> AudioEncoder:
    """``bitrate``: bit/s for a compressed format (``None``: its default); others ignore it."""
    return get(name).new_encoder(sample_rate, bitrate)


def new_decoder(name: str, *, sample_rate: int) -> AudioDecoder:
    return get(name).new_decoder(sample_rate)


__all__ = [
    "OUTPUT_FORMATS",
    "AudioDecoder",
    "AudioEncoder",
    "AudioFormatError",
    "Format",
    "OutputFormat",
    "PcmChunk",
    "get",
    "new_decoder",
    "new_encoder",
]
