"""Audio shaping between Piper and the wire: gain, edges, resampling, chunking.

All of it is plain numpy on float32 mono samples in [-1, 1] until :func:`to_s16le`.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

Samples = npt.NDArray[np.float32]

# Frames quieter than this (RMS, dBFS, before gain) are silence for trimming and loudness.
SILENCE_DBFS: Final = -55.0
FRAME_SECONDS: Final = 0.005
# Silence kept around speech when trimming Piper's own leading and trailing silence, which
# varies from 0 to 250 ms: trimmed, the pauses between sentences are ours and even.
EDGE_MARGIN_SECONDS: Final = 0.03
FADE_SECONDS: Final = 0.008
# Above this level the limiter bends peaks so that the fixed gain never clips.
LIMITER_KNEE: Final = 0.7
MIN_GAIN: Final = 0.25
MAX_GAIN: Final = 8.0


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def gain_to_db(gain: float) -> float:
    return 20.0 * math.log10(max(gain, 1e-12))


def frame_rms(x: Samples, rate: int) -> npt.NDArray[np.float64]:
    """RMS of consecutive FRAME_SECONDS frames (a short last frame is dropped)."""
    size = max(1, round(rate * FRAME_SECONDS))
    n = len(x) // size
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    frames = x[: n * size].astype(np.float64).reshape(n, size)
    rms: npt.NDArray[np.float64] = np.sqrt(np.mean(frames * frames, axis=1))
    return rms


def active_rms(x: Samples, rate: int) -> float:
    """RMS over the frames that are not silence: loudness of the speech itself."""
    rms = frame_rms(x, rate)
    active = rms[rms > db_to_gain(SILENCE_DBFS)]
    if active.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(active * active)))


def gain_for(x: Samples, rate: int, target_dbfs: float) -> float:
    """The gain that brings speech ``x`` to ``target_dbfs``, clamped to a sane range."""
    rms = active_rms(x, rate)
    if rms <= 0.0:
        return 1.0
    return min(MAX_GAIN, max(MIN_GAIN, db_to_gain(target_dbfs) / rms))


def speech_bounds(x: Samples, rate: int) -> tuple[int, int]:
    """Sample range ``[start, end)`` of ``x`` without its leading and trailing silence.

    Keeps EDGE_MARGIN_SECONDS of silence each side; all-silent audio gives ``(0, 0)``.
    """
    rms = frame_rms(x, rate)
    loud = np.flatnonzero(rms > db_to_gain(SILENCE_DBFS))
    if loud.size == 0:
        return 0, 0
    size = max(1, round(rate * FRAME_SECONDS))
    margin = round(rate * EDGE_MARGIN_SECONDS)
    start = max(0, int(loud[0]) * size - margin)
    end = min(len(x), (int(loud[-1]) + 1) * size + margin)
    return start, end


def soft_limit(x: Samples) -> Samples:
    """Identity below LIMITER_KNEE; above it, peaks approach 1.0 smoothly instead of clipping."""
    mag = np.abs(x)
    over = mag > LIMITER_KNEE
    if not over.any():
        return x
    out = x.copy()
    room = 1.0 - LIMITER_KNEE
    out[over] = np.sign(x[over]) * (
        LIMITER_KNEE + room * np.tanh((mag[over] - LIMITER_KNEE) / room)
    )
    return out


def fade_edges(x: Samples, rate: int) -> Samples:
    """Raised-cosine fade-in and fade-out, so a segment starts and ends at exactly zero."""
    n = min(len(x) // 2, round(rate * FADE_SECONDS))
    if n == 0:
        return x
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, n, dtype=np.float64))).astype(np.float32)
    out = x.copy()
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out


def silence(rate: int, seconds: float) -> Samples:
    return np.zeros(round(rate * seconds), dtype=np.float32)


def to_s16le(x: Samples) -> bytes:
    """float [-1, 1] → little-endian signed 16-bit PCM."""
    ints = np.clip(np.rint(x * 32767.0), -32767, 32767).astype("<i2")
    return bytes(ints.tobytes())


def chunk_sizes(total: int, target: int) -> list[int]:
    """Split ``total`` samples into the fewest near-equal pieces of at most ``target``.

    Every piece is at least half of ``target``, rounded down (unless ``total`` itself is
    shorter), so there is no runt chunk at the end of a segment.
    """
    if total <= 0:
        return []
    count = -(-total // target)
    base, extra = divmod(total, count)
    return [base + 1] * extra + [base] * (count - extra)


class StreamResampler:
    """One request's resampler: a single soxr stream, so there are no seams between segments."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: soxr.ResampleStream | None = (
            None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, "float32")
        )

    def process(self, x: Samples, *, last: bool) -> Samples:
        """Resample the next piece; ``last`` flushes the filter's tail."""
        if self._stream is None:
            return x
        out = self._stream.resample_chunk(np.ascontiguousarray(x, dtype=np.float32), last=last)
        return np.asarray(out, dtype=np.float32)
