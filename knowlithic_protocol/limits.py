"""Bounds both sides hold every value to: a stated rate or id is input, and input is bounded."""

from __future__ import annotations

from typing import Final

MIN_SAMPLE_RATE: Final = 8000
MAX_SAMPLE_RATE: Final = 48000
MAX_REQUEST_ID_LENGTH: Final = 128
MAX_VOICE_LENGTH: Final = 128
# a compressed format's bit rate a request may ask for, in bit/s
MIN_BITRATE: Final = 6000
MAX_BITRATE: Final = 64000
# Opus's when a request names none, chosen by measurement (bench/opus_link.py): a word error
# rate within 0.016 of PCM at 16 and 24 kHz, 29-30 kbit/s on the wire with every header
# (docs/benchmarks.md, section 6).  Here, not in formats/opus.py, so that reading it (the
# server's settings do) does not load PyAV.
DEFAULT_BITRATE: Final = 24000
