"""Ogg Opus payloads (RFC 7845): about a tenth of PCM's bytes for the same speech.

One request's audio is one Ogg Opus stream: the concatenation of its payloads, in order, is
a complete ``.opus`` file.  Every payload holds whole pages: the first starts with the
``OpusHead`` and ``OpusTags`` pages, and each message's audio is flushed as one page at once,
so nothing is held back but the start of a 20 ms frame.  The last page carries the end
granule position that trims the final frame's padding.

libopus does the coding, through PyAV's codec contexts (the ``av`` wheel bundles it: nothing
to install by hand); the Ogg framing is :mod:`.ogg`.  Mono, speech-tuned (``voip``), 20 ms
frames, at 8, 12, 16, 24 or 48 kHz: another rate is resampled to the nearest of those, and
the encoder says which one (``sample_rate``).
"""

from __future__ import annotations

import os
import struct
from typing import Final

import av
import av.error
import numpy as np

from ..limits import MAX_BITRATE, MIN_BITRATE
from . import ogg
from .base import AudioFormatError, PcmChunk

OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)
FRAME_MS: Final = 20
# bit/s: chosen by measurement (bench/opus_link.py): word error rate within 0.03 of PCM
DEFAULT_BITRATE: Final = 24000
_GRANULE_RATE: Final = 48000  # Ogg Opus counts granules at 48 kHz whatever the coded rate
_HEAD: Final = struct.Struct("<8sBBHIhB")  # RFC 7845 §5.1, mapping family 0
_VENDOR: Final = b"knowlithic"


def opus_rate(requested: int) -> int:
    """The Opus rate nearest to ``requested`` (the higher one on a tie)."""
    return min(OPUS_RATES, key=lambda rate: (abs(rate - requested), -rate))


class OpusEncoder:
    """One request's s16le mono PCM as Ogg Opus pages."""

    def __init__(self, *, sample_rate: int, bitrate: int | None = None) -> None:
        bitrate = DEFAULT_BITRATE if bitrate is None else bitrate
        if not MIN_BITRATE <= bitrate <= MAX_BITRATE:
            raise ValueError(f"bitrate must be from {MIN_BITRATE} to {MAX_BITRATE} bit/s")
        self._in_rate = sample_rate
        self._rate = opus_rate(sample_rate)
        self._resampler = (
            None
            if self._rate == sample_rate
            else av.AudioResampler(format="s16", layout="mono", rate=self._rate)
        )
        codec = av.CodecContext.create("libopus", "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.sample_rate = self._rate
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.options = {"application": "voip", "frame_duration": str(FRAME_MS)}
        codec.open()
        self._codec = codec
        self._frame_samples = self._rate * FRAME_MS // 1000
        head = bytes(codec.extradata or b"")
        if len(head) < _HEAD.size or head[:8] != b"OpusHead":
            raise RuntimeError("libopus gave no OpusHead")
        self._pre_skip = struct.unpack_from("<H", head, 10)[0]
        self._head = head
        self._serial = int.from_bytes(os.urandom(4), "little")
        self._sequence = 0
        self._granule = 0  # 48 kHz samples in the packets paged so far, pre-skip included
        self._samples_in = 0  # samples at the Opus rate handed to libopus, padding excluded
        self._pending = bytearray()  # less than a frame, at the Opus rate
        self._odd = b""  # the first byte of a sample split across calls
        self._pts = 0
        self._started = False
        self._ended = False

    @property
    def sample_rate(self) -> int:
        return self._rate

    def encode(self, pcm: bytes, *, last: bool = False) -> bytes:
        if self._ended:
            raise ValueError("the Opus stream has ended")
        out = bytearray()
        if not self._started:
            self._started = True
            out += self._page([self._head], flags=ogg.BOS)
            tags = b"OpusTags" + struct.pack("<I", len(_VENDOR)) + _VENDOR + struct.pack("<I", 0)
            out += self._page([tags])
        data = self._odd + pcm
        self._odd = data[len(data) & ~1 :]
        self._pending += self._resampled(data[: len(data) & ~1], flush=last)
        packets: list[bytes] = []
        frame_bytes = self._frame_samples * 2
        while len(self._pending) >= frame_bytes:
            packets += self._encode_frame(bytes(self._pending[:frame_bytes]))
            del self._pending[:frame_bytes]
        if last:
            self._ended = True
            if self._pending:
                real = len(self._pending) // 2
                padded = bytes(self._pending) + bytes(frame_bytes - len(self._pending))
                packets += self._encode_frame(padded, real_samples=real)
                self._pending.clear()
            packets += [bytes(p) for p in self._codec.encode(None)]  # the lookahead's tail
        if packets or last:
            out += self._audio_pages(packets, last=last)
        return bytes(out)

    def _resampled(self, pcm: bytes, *, flush: bool) -> bytes:
        if self._resampler is None:
            return pcm
        frames = []
        if pcm:
            frame = av.AudioFrame.from_ndarray(
                np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = self._in_rate
            frames += self._resampler.resample(frame)
        if flush:
            frames += self._resampler.resample(None)
        return b"".join(bytes(f.to_ndarray().astype("<i2").tobytes()) for f in frames)

    def _encode_frame(self, pcm: bytes, *, real_samples: int | None = None) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += self._frame_samples
        self._samples_in += self._frame_samples if real_samples is None else real_samples
        return [bytes(p) for p in self._codec.encode(frame)]

    def _audio_pages(self, packets: list[bytes], *, last: bool) -> bytes:
        per_packet = self._frame_samples * _GRANULE_RATE // self._rate
        out = bytearray()
        while True:
            batch: list[bytes] = []
            segments = 0
            while packets and segments + ogg.segments_for(packets[0]) <= 255:
                segments += ogg.segments_for(packets[0])
                batch.append(packets.pop(0))
            self._granule += per_packet * len(batch)
            granule = self._granule
            final = last and not packets
            if final:
                # the end trims the padding: what was put in, after the decoder's pre-skip
                end = self._pre_skip + self._samples_in * _GRANULE_RATE // self._rate
                granule = min(granule, end)
            out += self._page(batch, granule=granule, flags=ogg.EOS if final else 0)
            if not packets:
                return bytes(out)

    def _page(self, packets: list[bytes], *, granule: int = 0, flags: int = 0) -> bytes:
        page = ogg.page(
            packets, serial=self._serial, sequence=self._sequence, granule=granule, flags=flags
        )
        self._sequence += 1
        return page


class OpusDecoder:
    """One request's Ogg Opus payloads, back to s16le PCM at the stream's rate."""

    def __init__(self, *, sample_rate: int) -> None:
        self._asked_rate = sample_rate
        self._reader = ogg.PageReader()
        self._codec: av.AudioCodecContext | None = None
        self._channels = 1
        self._rate = sample_rate
        self._pre_skip = 0
        self._tags = False
        self._decoded = 0  # 48 kHz samples libopus gave (after its own pre-skip)
        self._resampler: av.AudioResampler | None = None

    @property
    def pending_bytes(self) -> int:
        return self._reader.pending_bytes

    def feed(self, payload: bytes, *, sample_rate: int | None = None) -> PcmChunk | None:
        pcm = bytearray()
        for page in self._reader.feed(payload):
            decoded = bytearray()
            for packet in page.packets:
                if self._codec is None:
                    self._open(packet)
                elif not self._tags:
                    if not packet.startswith(b"OpusTags"):
                        raise AudioFormatError("the Ogg Opus stream has no OpusTags header")
                    self._tags = True
                else:
                    decoded += self._decode(packet)
            if page.flags & ogg.EOS and self._codec is not None:
                decoded = self._trimmed(decoded, page.granule)
            pcm += self._resample(bytes(decoded), flush=bool(page.flags & ogg.EOS))
        return self._chunk(bytes(pcm))

    def finish(self) -> PcmChunk | None:
        if self._codec is None:
            raise AudioFormatError("the Ogg Opus stream ended before its OpusHead")
        if self._reader.pending_bytes:
            raise AudioFormatError(
                f"the Ogg Opus stream ended in the middle of a page "
                f"({self._reader.pending_bytes} bytes): it was truncated"
            )
        return self._chunk(self._resample(b"", flush=not self._reader.ended))

    def _open(self, head: bytes) -> None:
        if len(head) < _HEAD.size or head[:8] != b"OpusHead":
            raise AudioFormatError("the Ogg Opus stream does not start with an OpusHead")
        _, version, channels, pre_skip, input_rate, _, family = _HEAD.unpack_from(head)
        if version >> 4 != 0 or channels not in (1, 2) or family != 0:
            raise AudioFormatError(
                f"unsupported Opus stream: version {version}, {channels} channels, "
                f"mapping family {family} (mono or stereo, family 0, is supported)"
            )
        codec = av.CodecContext.create("libopus", "r")
        assert isinstance(codec, av.AudioCodecContext)
        codec.layout = "mono" if channels == 1 else "stereo"
        codec.extradata = head
        self._codec = codec
        self._channels = channels
        self._pre_skip = pre_skip
        # libopus decodes at 48 kHz; the stream plays at the rate it was coded at
        self._rate = input_rate if input_rate in OPUS_RATES else _GRANULE_RATE
        if self._rate != _GRANULE_RATE:
            self._resampler = av.AudioResampler(
                format="s16", layout=codec.layout.name, rate=self._rate
            )

    def _decode(self, packet: bytes) -> bytes:
        assert self._codec is not None
        try:
            frames = self._codec.decode(av.Packet(packet))
        except av.error.FFmpegError:
            raise AudioFormatError(
                "an Opus packet could not be decoded: the audio is corrupt"
            ) from None
        out = b"".join(bytes(f.to_ndarray().astype("<i2").tobytes()) for f in frames)
        self._decoded += len(out) // (2 * self._channels)
        return out

    def _trimmed(self, pcm: bytearray, granule: int) -> bytearray:
        """The end of the stream: drop what lies past its last granule (the padding)."""
        excess = self._decoded - max(0, granule - self._pre_skip)
        if excess > 0:
            keep = max(0, len(pcm) - excess * 2 * self._channels)
            del pcm[keep:]
            self._decoded -= excess
        return pcm

    def _resample(self, pcm: bytes, *, flush: bool) -> bytes:
        if self._resampler is None:
            return pcm
        frames = []
        if pcm:
            samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(
                samples, format="s16", layout="mono" if self._channels == 1 else "stereo"
            )
            frame.sample_rate = _GRANULE_RATE
            frames += self._resampler.resample(frame)
        if flush:
            frames += self._resampler.resample(None)
            self._resampler = av.AudioResampler(
                format="s16", layout="mono" if self._channels == 1 else "stereo", rate=self._rate
            )
        return b"".join(bytes(f.to_ndarray().astype("<i2").tobytes()) for f in frames)

    def _chunk(self, pcm: bytes) -> PcmChunk | None:
        if not pcm:
            return None
        return PcmChunk(pcm=pcm, sample_rate=self._rate, num_channels=self._channels)
