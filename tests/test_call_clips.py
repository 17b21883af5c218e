"""The shipped clips the worker plays when no TTS server can speak: they decode, they are
short and small, and they say their words (pocketsphinx hears them)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.server.asr import ASR_SAMPLE_RATE, normalize, transcribe, word_errors
from worker.call_policy.clips import APOLOGY_FILE, GOODBYE_FILE, Clip, load_clips

# (seconds at least, at most): long enough to be the words, short enough not to drag on
DURATIONS = {"apology": (3.0, 6.0), "goodbye": (4.0, 8.0)}


def clip_named(name: str, sample_rate: int) -> Clip:
    clips = load_clips(sample_rate)
    clip: Clip = getattr(clips, name)
    return clip


def test_the_clip_files_are_small() -> None:
    for path in (APOLOGY_FILE, GOODBYE_FILE):
        assert path.suffix == ".ogg"
        assert 2_000 < path.stat().st_size < 40_000


@pytest.mark.parametrize("name", ["apology", "goodbye"])
def test_each_clip_decodes_to_its_words(name: str) -> None:
    clip = clip_named(name, ASR_SAMPLE_RATE)
    low, high = DURATIONS[name]
    assert low < clip.duration < high
    samples = np.frombuffer(clip.pcm, dtype=np.int16).astype(np.float64)
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(samples**2)) / 32768)
    assert -30 < rms_dbfs < -6  # audible, not clipped flat
    reference = normalize(clip.text)
    heard = normalize(transcribe(clip.pcm))
    # Piper's joe voice through pocketsphinx: these words come back (0 errors measured);
    # one is allowed so a recognizer update cannot fail a clip that still says them.
    assert word_errors(reference, heard) <= 1, heard


@pytest.mark.parametrize("sample_rate", [8000, 24000, 48000])
def test_clips_are_resampled_to_the_rate_asked_for(sample_rate: int) -> None:
    at_16k = clip_named("apology", 16000)
    clip = clip_named("apology", sample_rate)
    assert clip.sample_rate == sample_rate
    assert clip.duration == pytest.approx(at_16k.duration, abs=0.03)
    frames = clip.frames()
    assert {f.sample_rate for f in frames} == {sample_rate}
    assert all(f.samples_per_channel == sample_rate // 50 for f in frames[:-1])
    assert b"".join(bytes(f.data) for f in frames) == clip.pcm
