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
