"""MP3 payloads (MPEG-1/2 Layer III, LAME): what OpenAI's speech API sends by default.

Here for clients that speak OpenAI's API with its defaults (``livekit.plugins.openai.TTS``
asks for ``mp3``).  One request's audio is one MP3 elementary stream: the concatenation of
its payloads, in order, is a playable ``.mp3`` file (no ID3 tag, no Xing header: its length
is not known while it streams).

LAME holds audio back (its lookahead and bit reservoir) and returns a frame's packet a frame
or two after its samples went in, so a payload may be empty and the last ~50 ms of a segment
leave with the next one or with the flush at the end.  The decoder side does not trim the
encoder's delay and padding (~50 ms of silence, at the start and end): no raw MP3 stream says
how much there is.

Mono, 16-bit, constant bit rate, at 8, 11.025, 12, 16, 22.05, 24, 32, 44.1 or 48 kHz:
another rate is resampled to the nearest of those, and the encoder says which (``sample_rate``).
"""

from __future__ import annotations

from typing import Final

import av
import av.error
import numpy as np

from ..limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from .base import AudioFormatError, PcmChunk
from .pyav import INT16, Resampler, check_encoder, mono_s16, open_encoder

MP3_RATES: Final = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# bit/s when a request names none: speech at 24 kHz mono is clear at 64 kbit/s, and OpenAI
# sends about that much
DEFAULT_MP3_BITRATE: Final = 64000
MIN_MP3_BITRATE: Final = 8000
MAX_MP3_BITRATE: Final = 160000
# an MP3 frame is at most 2881 bytes; a decoder holding more than this has no frame in sight
_MAX_PENDING: Final = 64 * 1024


def mp3_rate(requested: int) -> int:
    """The MP3 rate nearest to ``requested`` (the higher one on a tie)."""
    return min(MP3_RATES, key=lambda rate: (abs(rate - requested), -rate))


class Mp3Encoder:
    """One request's s16le mono PCM as MP3 frames."""

    def __init__(self, *, sample_rate: int, bitrate: int | None = None) -> None:
        bitrate = DEFAULT_MP3_BITRATE if bitrate is None else bitrate
        check_encoder(
            bitrate=bitrate, low=MIN_MP3_BITRATE, high=MAX_MP3_BITRATE, sample_rate=sample_rate
        )
        self._rate = mp3_rate(sample_rate)
        self._resampler = Resampler.between(sample_rate, self._rate)
        # mono: planar s16 is the same bytes as packed
        codec = open_encoder(
            "libmp3lame", sample_rate=self._rate, sample_format="s16p", bitrate=bitrate
        )
        self._codec = codec
        self._frame_samples = codec.frame_size  # 1152 (MPEG-1) or 576 (MPEG-2, <= 24 kHz)
        self._pending = bytearray()  # less than a frame, at the MP3 rate
        self._odd = b""  # the first byte of a sample split across calls
        self._pts = 0
        self._ended = False

    @property
    def sample_rate(self) -> int:
        return self._rate

    def encode(self, pcm: bytes, *, last: bool = False) -> bytes:
        if self._ended:
            raise ValueError("the MP3 stream has ended")
        data = self._odd + pcm
        whole = len(data) & ~1
        self._odd = data[whole:]
        self._pending += self._resample(data[:whole], flush=last)
        out = bytearray()
        frame_bytes = self._frame_samples * 2
        while len(self._pending) >= frame_bytes:
            out += self._encode_frame(bytes(self._pending[:frame_bytes]))
            del self._pending[:frame_bytes]
        if last:
            if self._pending:  # LAME takes a short last frame and pads it itself
                out += self._encode_frame(bytes(self._pending))
                self._pending.clear()
            out += b"".join(bytes(p) for p in self._codec.encode(None))
            self._ended = True
        return bytes(out)

    def _resample(self, pcm: bytes, *, flush: bool) -> bytes:
        if self._resampler is None:
            return pcm
        return self._resampler.feed(pcm) + (self._resampler.flush() if flush else b"")

    def _encode_frame(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype=INT16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16p", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += len(samples)
        return b"".join(bytes(p) for p in self._codec.encode(frame))


class Mp3Decoder:
    """One request's MP3 payloads, in any split, back to mono s16le at the stream's rate."""

    def __init__(self, *, sample_rate: int) -> None:
        self._rate = sample_rate  # until the first frame says otherwise
        codec = av.CodecContext.create("mp3", "r")
        assert isinstance(codec, av.AudioCodecContext)
        self._codec = codec
        self._fed = 0  # bytes given to the parser since it last returned a packet

    @property
    def pending_bytes(self) -> int:
        return self._fed

    def feed(self, payload: bytes, *, sample_rate: int | None = None) -> PcmChunk | None:
        if not payload:
            return None
        self._fed += len(payload)
        return self._decode(payload)

    def finish(self) -> PcmChunk | None:
        chunk = self._decode(None)
        self._fed = 0
        return chunk

    def _decode(self, data: bytes | None) -> PcmChunk | None:
        pcm = bytearray()
        try:
            packets = self._codec.parse(data)
            if packets:
                self._fed = 0
            frames = [f for p in packets for f in self._codec.decode(p)]
            if data is None:
                frames += self._codec.decode(None)
        except av.error.FFmpegError as e:
            raise AudioFormatError(f"the audio is not MP3 this decoder can read: {e}") from None
        if self._fed > _MAX_PENDING:
            raise AudioFormatError("no MP3 frame in the audio: it is not an MP3 stream")
        for frame in frames:
            if not MIN_SAMPLE_RATE <= frame.sample_rate <= MAX_SAMPLE_RATE:
                raise AudioFormatError(f"an MP3 frame states {frame.sample_rate} Hz")
            self._rate = frame.sample_rate
            pcm += mono_s16(frame).tobytes()
        if not pcm:
            return None
        return PcmChunk(pcm=bytes(pcm), sample_rate=self._rate, num_channels=1)
