"""Raw s16le mono PCM: the payload is the samples, nothing more."""

from __future__ import annotations


class PcmEncoder:
    def __init__(self, *, sample_rate: int) -> None:
        self._rate = sample_rate

    @property
    def sample_rate(self) -> int:
        return self._rate

    def encode(self, pcm: bytes, *, last: bool = False) -> bytes:
        return pcm
