"""The PyAV plumbing the compressed formats share: checking an encoder's settings, opening a
codec, mono s16 frames in and out, and a resampler fed bytes."""

from __future__ import annotations

from typing import Final

import av
import numpy as np
import numpy.typing as npt

from ..limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

INT16: Final = np.dtype("<i2")


def check_encoder(*, bitrate: int, low: int, high: int, sample_rate: int) -> None:
    """``ValueError`` naming the setting out of range."""
    if not low <= bitrate <= high:
        raise ValueError(f"bitrate {bitrate} is out of range: from {low} to {high} bit/s")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"sample rate {sample_rate} is out of range: from {MIN_SAMPLE_RATE} to "
            f"{MAX_SAMPLE_RATE} Hz"
        )


def open_encoder(
    name: str,
    *,
    sample_rate: int,
    sample_format: str,
    bitrate: int,
    options: dict[str, str] | None = None,
) -> av.AudioCodecContext:
    """A mono encoder, opened; ``RuntimeError`` if it ignored any of ``options``."""
    codec = av.CodecContext.create(name, "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate = sample_rate
    codec.layout = "mono"
    codec.format = sample_format
    codec.bit_rate = bitrate
    if options:
        codec.options = dict(options)
    codec.open()
    if options and codec.options:  # FFmpeg leaves the options it did not take
        raise RuntimeError(f"this {name} ignores the options {codec.options}")
    return codec


def mono_frame(samples: npt.NDArray[np.int16], rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    return frame


def mono_s16(frame: av.AudioFrame) -> npt.NDArray[np.int16]:
    """A decoded frame as mono 16-bit samples, whatever its layout and sample format."""
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    # planar: one row per channel; packed: one row, channels interleaved
    per_channel = array if frame.format.is_planar else array.reshape(-1, channels).T
    if np.issubdtype(per_channel.dtype, np.floating):
        per_channel = np.clip(per_channel * 32768.0, -32768, 32767)
    mono: npt.NDArray[np.int16] = (
        per_channel[0].astype(INT16)
        if channels == 1
        else (per_channel.astype(np.int32).sum(axis=0) // channels).astype(INT16)  # the mean
    )
    return mono


class Resampler:
    """s16le mono bytes from one rate to another, continuous across calls."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._from = from_rate
        self._av = av.AudioResampler(format="s16", layout="mono", rate=to_rate)

    @staticmethod
    def between(from_rate: int, to_rate: int) -> Resampler | None:
        """One, or ``None`` where the rates are the same."""
        return None if from_rate == to_rate else Resampler(from_rate, to_rate)

    def feed(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        return self._out(mono_frame(np.frombuffer(pcm, dtype=INT16), self._from))

    def flush(self) -> bytes:
        """What its filter still holds (a few samples): the end of the stream."""
        return self._out(None)

    def _out(self, frame: av.AudioFrame | None) -> bytes:
        return b"".join(
            bytes(f.to_ndarray().astype(INT16).tobytes()) for f in self._av.resample(frame)
        )
