"""The prepared clips the worker plays without the TTS: decoded once per process.

The files are Ogg/Opus made once by ``scripts/make_call_clips.py`` (the bundled Piper voice,
CC0) and shipped with the worker, so an outage of every TTS server cannot silence them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import av
import numpy as np
from livekit import rtc

CLIPS_DIR: Final = Path(__file__).resolve().parent / "clips"
# The words of each clip: the script speaks them, the session shows them as the transcript,
# and the test checks the file still says them.
APOLOGY_TEXT: Final = "Sorry, I'm having trouble speaking right now. One moment please."
GOODBYE_TEXT: Final = (
    "I'm sorry, I can't continue this call right now. Please call back later. Goodbye."
)
APOLOGY_FILE: Final = CLIPS_DIR / "apology.ogg"
GOODBYE_FILE: Final = CLIPS_DIR / "goodbye.ogg"
_FRAME_MS: Final = 20


@dataclass(frozen=True)
class Clip:
    """One clip, as 16-bit mono frames at the rate it was loaded for."""

    text: str
    pcm: bytes
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate

    def frames(self) -> list[rtc.AudioFrame]:
        """Fresh 20 ms frames (the pipeline may hold or alter frames it is given)."""
        step = self.sample_rate * _FRAME_MS // 1000 * 2
        return [
            rtc.AudioFrame(
                self.pcm[i : i + step], self.sample_rate, 1, len(self.pcm[i : i + step]) // 2
            )
            for i in range(0, len(self.pcm), step)
        ]


@dataclass(frozen=True)
class Clips:
    apology: Clip
    goodbye: Clip


def decode(path: Path, sample_rate: int) -> bytes:
    """The whole file as 16-bit mono PCM at ``sample_rate`` (PyAV, which the worker has)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks: list[bytes] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(_plane(f) for f in resampler.resample(frame))
        chunks.extend(_plane(f) for f in resampler.resample(None))
    return b"".join(chunks)


def _plane(frame: av.AudioFrame) -> bytes:
    samples: np.ndarray = frame.to_ndarray()  # (1, n) int16 for packed mono s16
    return samples.astype(np.int16).tobytes()


def load_clips(sample_rate: int) -> Clips:
    """Both clips at ``sample_rate`` (the TTS's: what the session already plays)."""
    return Clips(
        apology=Clip(APOLOGY_TEXT, decode(APOLOGY_FILE, sample_rate), sample_rate),
        goodbye=Clip(GOODBYE_TEXT, decode(GOODBYE_FILE, sample_rate), sample_rate),
    )
