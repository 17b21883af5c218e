"""Ogg Opus payloads (RFC 7845): about a tenth of PCM's bytes for the same speech.

One request's audio is one Ogg Opus stream: the concatenation of its payloads, in order, is
a complete ``.opus`` file.  Every payload holds whole pages: the first starts with the
``OpusHead`` and ``OpusTags`` pages, and each message's audio is flushed as one page at once,
so nothing is held back but the start of a 20 ms frame.  The last page carries the end
granule position that trims the final frame's padding.

libopus does the coding, through PyAV's codec contexts (the ``av`` wheel bundles it: nothing
to install by hand); the Ogg framing is :mod:`.ogg`, because a muxer holds pages back.
Mono, speech-tuned (``voip``), 20 ms frames, at 8, 12, 16, 24 or 48 kHz: another rate is
resampled to the nearest of those, and the encoder says which one (``sample_rate``).

Measured with PyAV 18 (FFmpeg 8.1): libopus returns each 20 ms frame's packet from the call
that completes the frame, holding none back; its lookahead (pre-skip) is 312 samples at
48 kHz (6.5 ms) whatever the rate, and draining it at the end yields one more packet.
"""

from __future__ import annotations

import os
import struct
from typing import Final

import av
import av.error
import numpy as np
import numpy.typing as npt

from ..limits import DEFAULT_BITRATE, MAX_BITRATE, MIN_BITRATE
from . import ogg
from .base import AudioFormatError, PcmChunk
from .pyav import INT16, Resampler, check_encoder, mono_frame, mono_s16, open_encoder

__all__ = [
    "DEFAULT_BITRATE",
    "FRAME_MS",
    "MAX_BITRATE",
    "MIN_BITRATE",
    "OPUS_RATES",
    "OpusDecoder",
    "OpusEncoder",
    "opus_rate",
]

OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)
FRAME_MS: Final = 20
_GRANULE_RATE: Final = 48000  # Ogg Opus counts granules at 48 kHz whatever the coded rate
_PACKET_GRANULES: Final = _GRANULE_RATE * FRAME_MS // 1000  # every packet is one 20 ms frame
_HEAD: Final = struct.Struct("<8sBBHIhB")  # RFC 7845 §5.1, mapping family 0
_VENDOR: Final = b"knowlithic_protocol"
# RFC 6716: 120 ms of 1275-byte frames at most; anything larger is not an Opus packet
_MAX_OPUS_PACKET: Final = 6 * 1275 + 64
# OpusTags may be large (cover art), but a TTS stream has no use for one past this
_MAX_HEADER_PACKET: Final = 64 * 1024


def opus_rate(requested: int) -> int:
    """The Opus rate nearest to ``requested`` (the higher one on a tie)."""
    return min(OPUS_RATES, key=lambda rate: (abs(rate - requested), -rate))


class OpusEncoder:
    """One request's s16le mono PCM as Ogg Opus pages."""

    def __init__(self, *, sample_rate: int, bitrate: int | None = None) -> None:
        bitrate = DEFAULT_BITRATE if bitrate is None else bitrate
        check_encoder(bitrate=bitrate, low=MIN_BITRATE, high=MAX_BITRATE, sample_rate=sample_rate)
        self._rate = opus_rate(sample_rate)
        self._resampler = Resampler.between(sample_rate, self._rate)
        codec = open_encoder(
            "libopus",
            sample_rate=self._rate,
            sample_format="s16",
            bitrate=bitrate,
            options={"application": "voip", "frame_duration": str(FRAME_MS)},
        )
        self._codec = codec
        self._frame_samples = self._rate * FRAME_MS // 1000
        # libopus's OpusHead: its pre-skip is the encoder's lookahead (FFmpeg's
        # initial_padding, which PyAV does not expose; the first packet's pts is minus it)
        head = bytes(codec.extradata or b"")
        if len(head) < _HEAD.size or head[:8] != b"OpusHead":
            raise RuntimeError("libopus gave no OpusHead")
        self._pre_skip: int = _HEAD.unpack_from(head)[3]
        self._head = head
        self._writer = ogg.PageWriter(int.from_bytes(os.urandom(4), "little"))
        self._granule = 0  # 48 kHz samples in the packets so far, pre-skip included
        self._samples_in = 0  # samples at the Opus rate given to libopus, padding excluded
        self._pending = bytearray()  # less than a frame, at the Opus rate
        self._odd = b""  # the first byte of a sample split across calls
        self._pts = 0

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def pre_skip(self) -> int:
        """Samples at 48 kHz a decoder drops from the start: the encoder's lookahead."""
        return self._pre_skip

    def encode(self, pcm: bytes, *, last: bool = False) -> bytes:
        if self._writer.ended:
            raise ValueError("the Opus stream has ended")
        out = bytearray()
        if self._writer.sequence == 0:
            # RFC 7845 §3: each header packet alone on its page, granule position 0
            out += self._writer.write([(self._head, 0)], first=True)
            out += self._writer.write([(_tags(), 0)])
        data = self._odd + pcm
        whole = len(data) & ~1
        self._odd = data[whole:]  # half a sample waits for its other byte
        self._pending += self._resample(data[:whole], flush=last)
        packets: list[bytes] = []
        frame_bytes = self._frame_samples * 2
        while len(self._pending) >= frame_bytes:
            packets += self._encode_frame(bytes(self._pending[:frame_bytes]), frame_bytes // 2)
            del self._pending[:frame_bytes]
        if last:
            if self._pending or not self._pts:  # a partial frame, or no audio at all
                real = len(self._pending) // 2
                padded = bytes(self._pending) + bytes(frame_bytes - len(self._pending))
                packets += self._encode_frame(padded, real)
                self._pending.clear()
            # the lookahead's last samples are still inside libopus: draining gives them
            packets += [bytes(p) for p in self._codec.encode(None)]
        if packets or last:
            out += self._writer.write(self._granules(packets, last=last), last=last)
        return bytes(out)

    def _resample(self, pcm: bytes, *, flush: bool) -> bytes:
        if self._resampler is None:
            return pcm
        return self._resampler.feed(pcm) + (self._resampler.flush() if flush else b"")

    def _encode_frame(self, pcm: bytes, real_samples: int) -> list[bytes]:
        frame = mono_frame(np.frombuffer(pcm, dtype=INT16), self._rate)
        frame.pts = self._pts
        self._pts += self._frame_samples
        self._samples_in += real_samples
        return [bytes(p) for p in self._codec.encode(frame)]

    def _granules(self, packets: list[bytes], *, last: bool) -> list[tuple[bytes, int]]:
        numbered = []
        for packet in packets:
            self._granule += _PACKET_GRANULES
            numbered.append((packet, self._granule))
        if not last:
            return numbered
        # RFC 7845 §4.5: the end granule position trims the padding and the lookahead's tail:
        # what was put in, after the pre-skip.  Capped on every page of the call, so that
        # granules never go back should the last call need more than one page.
        end = self._pre_skip + self._samples_in * _GRANULE_RATE // self._rate
        return [(packet, min(granule, end)) for packet, granule in numbered]


def _tags() -> bytes:
    return b"OpusTags" + struct.pack("<I", len(_VENDOR)) + _VENDOR + struct.pack("<I", 0)


class OpusDecoder:
    """One request's Ogg Opus payloads, back to s16le mono PCM at the stream's rate.

    The rate is the OpusHead's input rate if Opus codes at it, else 48 kHz (libopus always
    decodes at 48 kHz; a lower rate is resampled).  A message's stated rate is ignored: the
    stream's header says what the audio is.
    """

    def __init__(self, *, sample_rate: int) -> None:
        self._reader = ogg.PageReader(max_packet=_MAX_HEADER_PACKET)
        self._codec: av.AudioCodecContext | None = None
        self._rate = sample_rate  # until the OpusHead says
        self._pre_skip = 0
        self._tags = False
        self._position = 0  # 48 kHz samples decoded, pre-skip included
        self._start: int | None = None  # the granule position of the stream's first sample
        self._resampler: Resampler | None = None
        self._flushed = False

    @property
    def pending_bytes(self) -> int:
        return self._reader.pending_bytes

    @property
    def sample_rate(self) -> int:
        return self._rate

    def feed(self, payload: bytes, *, sample_rate: int | None = None) -> PcmChunk | None:
        pcm = bytearray()
        for page in self._reader.feed(payload):
            pcm += self._page(page)
        return self._chunk(bytes(pcm))

    def finish(self) -> PcmChunk | None:
        if self._reader.pending_bytes or self._reader.pending_packet_bytes:
            held = self._reader.pending_bytes + self._reader.pending_packet_bytes
            raise AudioFormatError(
                f"the Ogg Opus stream was truncated: it ended inside a page or packet "
                f"({held} bytes held)"
            )
        if self._codec is None:
            raise AudioFormatError("the Ogg Opus stream was truncated before its OpusHead")
        if not self._tags:
            raise AudioFormatError("the Ogg Opus stream was truncated before its OpusTags")
        return self._chunk(self._flush())

    def _page(self, page: ogg.Page) -> bytes:
        if self._codec is None:
            if len(page.packets) != 1:
                raise AudioFormatError(
                    "the first Ogg page must hold the OpusHead alone "
                    f"(it holds {len(page.packets)} packets)"
                )
            self._open(page.packets[0])
            return b""
        packets = page.packets
        if not self._tags and packets:
            _check_tags(packets[0])
            self._tags = True
            if len(packets) > 1:
                raise AudioFormatError("audio shares the OpusTags page (RFC 7845 §3)")
            return b""
        decoded = [self._decode(packet) for packet in packets]
        samples = sum(len(d) for d in decoded)
        before = self._position
        self._position += samples
        ends = bool(page.flags & ogg.EOS)
        if samples and self._start is None:
            if page.granule == ogg.NO_GRANULE:
                raise AudioFormatError(f"Ogg page {page.sequence} has audio but no granule")
            # RFC 7845 §4.5: a stream may start past granule 0; only an end may cut samples
            self._start = page.granule - self._position
            if self._start < 0 and not ends:
                raise AudioFormatError(
                    f"the first audio page's granule position {page.granule} is less than "
                    f"its {self._position} samples"
                )
            self._start = max(self._start, 0)
        keep_from = max(0, self._pre_skip - before)
        keep_to = samples
        if ends and page.granule != ogg.NO_GRANULE:
            # the end granule trims the last frame's padding
            keep_to = min(samples, max(0, page.granule - (self._start or 0) - before))
        pcm = b""
        if keep_from < keep_to:
            pcm = np.concatenate(decoded)[keep_from:keep_to].tobytes()
        pcm = self._resample(pcm)
        if ends:
            pcm += self._flush()
        return pcm

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
        # the pre-skip is ours to apply (with the end trimming, in one place): libopus gets
        # a header without it and decodes every sample
        codec.extradata = head[:10] + b"\x00\x00" + head[12:]
        self._codec = codec
        self._pre_skip = pre_skip
        self._rate = input_rate if input_rate in OPUS_RATES else _GRANULE_RATE
        if self._rate != _GRANULE_RATE:
            self._resampler = Resampler(_GRANULE_RATE, self._rate)

    def _decode(self, packet: bytes) -> npt.NDArray[np.int16]:
        assert self._codec is not None
        # an empty packet would tell FFmpeg the stream ended (RFC 6716: at least one byte)
        if not packet or len(packet) > _MAX_OPUS_PACKET:
            raise AudioFormatError(f"a {len(packet)}-byte Opus packet: the audio is corrupt")
        try:
            frames = self._codec.decode(av.Packet(packet))
        except (av.error.FFmpegError, ValueError) as error:
            raise AudioFormatError(
                f"an Opus packet could not be decoded ({error.__class__.__name__}): "
                "the audio is corrupt"
            ) from None
        if not frames:
            return np.zeros(0, dtype=INT16)
        return np.concatenate([mono_s16(frame) for frame in frames])

    def _resample(self, pcm: bytes) -> bytes:
        if self._resampler is None:
            return pcm
        return self._resampler.feed(pcm)

    def _flush(self) -> bytes:
        # the resampler's filter holds a few samples back until the end
        if self._resampler is None or self._flushed:
            return b""
        self._flushed = True
        return self._resampler.flush()

    def _chunk(self, pcm: bytes) -> PcmChunk | None:
        if not pcm:
            return None
        return PcmChunk(pcm=pcm, sample_rate=self._rate, num_channels=1)


def _check_tags(packet: bytes) -> None:
    """RFC 7845 §5.2: the magic, then a vendor string and comments that fit the packet."""
    if not packet.startswith(b"OpusTags"):
        raise AudioFormatError("the second Ogg Opus packet is not OpusTags")
    try:
        (length,) = struct.unpack_from("<I", packet, 8)
        position = 12 + length
        (count,) = struct.unpack_from("<I", packet, position)
        position += 4
        for _ in range(count):
            (length,) = struct.unpack_from("<I", packet, position)
            position += 4 + length
    except struct.error:
        raise AudioFormatError("the OpusTags header is truncated") from None
    if position > len(packet):
        raise AudioFormatError("the OpusTags header is truncated")
