"""The audio payload formats, and the one place each is registered.

A new format is one module with an encoder and a decoder, plus one entry in ``_FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, get_args

from .base import AudioDecoder, AudioEncoder, AudioFormatError, PcmChunk
from .pcm import PcmEncoder
from .wav import WavDecoder, WavEncoder

OutputFormat: TypeAlias = Literal["pcm", "wav"]


@dataclass(frozen=True)
class Format:
    name: OutputFormat
    new_encoder: Callable[[int], AudioEncoder]  # the request's sample rate
    new_decoder: Callable[[int], AudioDecoder]  # the rate asked for


def _wav_decoder(rate: int) -> AudioDecoder:
    # servers label raw PCM as WAV and WAV as PCM; the decoder takes both, whatever was asked
    return WavDecoder(sample_rate=rate)


_FORMATS: Final[dict[str, Format]] = {
    "pcm": Format("pcm", lambda rate: PcmEncoder(sample_rate=rate), _wav_decoder),
    "wav": Format("wav", lambda rate: WavEncoder(sample_rate=rate), _wav_decoder),
}
OUTPUT_FORMATS: Final[tuple[OutputFormat, ...]] = get_args(OutputFormat)


def get(name: str) -> Format:
    """The registered format ``name``; :class:`KeyError` for one this package does not know."""
    return _FORMATS[name]


def new_encoder(name: str, *, sample_rate: int) -> AudioEncoder:
    return get(name).new_encoder(sample_rate)


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
