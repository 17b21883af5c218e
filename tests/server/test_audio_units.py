"""Audio shaping helpers: chunking, WAV header, limiter, fades, streaming resampler."""

from __future__ import annotations

import struct

import numpy as np
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_server import audio


@settings(database=None)  # keep the repository free of .hypothesis/
@given(st.integers(0, 200_000), st.integers(1, 5_000))
def test_chunks_cover_everything_and_are_never_runts(total: int, target: int) -> None:
    sizes = audio.chunk_sizes(total, target)
    assert sum(sizes) == total
    assert all(size <= target for size in sizes)
    if total > target:
        assert all(size >= target // 2 for size in sizes)


def test_soft_limit_leaves_quiet_audio_alone_and_never_clips() -> None:
    quiet = np.linspace(-0.6, 0.6, 101, dtype=np.float32)
    assert np.array_equal(audio.soft_limit(quiet), quiet)
    loud = np.linspace(-3, 3, 1001, dtype=np.float32)
    limited = audio.soft_limit(loud)
    assert np.all(np.abs(limited) < 1.0)
    assert np.all(np.diff(limited) >= 0)  # monotonic: no folding


def test_fades_start_and_end_at_zero() -> None:
    x = np.ones(2000, dtype=np.float32)
    faded = audio.fade_edges(x, 22050)
    assert faded[0] == 0.0 and faded[-1] == 0.0
    assert np.all(faded[500:1500] == 1.0)


def test_speech_bounds_trim_silence_but_keep_a_margin() -> None:
    rate = 22050
    x = np.zeros(rate, dtype=np.float32)
    x[5000:8000] = 0.3
    start, end = audio.speech_bounds(x, rate)
    margin = round(rate * audio.EDGE_MARGIN_SECONDS)
    assert 5000 - margin - 200 <= start <= 5000 - margin + 200
    assert 8000 + margin - 200 <= end <= 8000 + margin + 200
    assert audio.speech_bounds(np.zeros(1000, dtype=np.float32), rate) == (0, 0)


def test_stream_resampler_pieces_equal_one_pass() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(22050) * 0.1).astype(np.float32)
    stream = audio.StreamResampler(22050, 16000)
    pieces = [stream.process(x[:7000], last=False), stream.process(x[7000:], last=True)]
    streamed = np.concatenate(pieces)
    whole = soxr.ResampleStream(22050, 16000, 1, "float32").resample_chunk(x, last=True)
    assert len(streamed) == len(whole) == 16000
    assert np.allclose(streamed, whole, atol=1e-6)


def test_same_rate_passes_through() -> None:
    x = np.arange(10, dtype=np.float32)
    assert np.array_equal(audio.StreamResampler(22050, 22050).process(x, last=True), x)


def test_s16le_is_little_endian_and_clipped() -> None:
    pcm = audio.to_s16le(np.array([0.0, 1.0, -2.0, 0.5], dtype=np.float32))
    assert struct.unpack("<4h", pcm) == (0, 32767, -32767, 16384)
