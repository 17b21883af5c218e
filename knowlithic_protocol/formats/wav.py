"""WAV and raw PCM payloads: the server's header writer, and a decoder that takes either.

The decoder turns one request's audio payloads into whole 16-bit PCM samples.

Servers send audio in several shapes, and this decoder takes all of them without being told
which one is coming:

* raw s16le PCM, at a rate the message states or the rate that was asked for;
* one WAV file per request: a header in the first message, raw PCM after it;
* one WAV file per message: every message starts with its own ``RIFF`` header.

A WAV header is honoured, not assumed to be 44 bytes: ``LIST``/``fact`` chunks before the
data are skipped, and a ``data`` chunk with a real length ends where it says, so a trailer
chunk after it (``LIST``, ``id3 ``) is never played as PCM.  A length of 0 or 0xFFFFFFFF
means "until the stream ends".  A length that lies short (more audio follows, and it is not
a chunk) is not believed: the audio goes on playing.
Byte counts that split a sample (or a stereo frame) across messages, even across per-message
WAV files of one format, are carried over, so samples never shift by a byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ..limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from .base import AudioFormatError, PcmChunk

WAV_HEADER_SIZE: Final = 44
_RIFF: Final = b"RIFF"
_WAVE: Final = b"WAVE"
_WAVE_FORMAT_PCM: Final = 1
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_STREAMING_SIZES: Final = frozenset({0, 0xFFFFFFFF})
_MAX_HEADER_BYTES: Final = 64 * 1024
_CHUNK_HEADER: Final = struct.Struct("<4sI")
_FMT: Final = struct.Struct("<HHIIHH")
_TRAILER_CHUNKS: Final = frozenset(
    {
        b"LIST",
        b"id3 ",
        b"ID3 ",
        b"JUNK",
        b"junk",
        b"PAD ",
        b"fact",
        b"bext",
        b"cue ",
        b"smpl",
        b"inst",
        b"acid",
        b"iXML",
        b"axml",
        b"umid",
        b"PEAK",
        b"cart",
        b"DISP",
        b"plst",
    }
)


@dataclass(frozen=True)
class _WavHeader:
    sample_rate: int
    num_channels: int
    data_offset: int
    data_size: int | None  # None: until the stream ends


class WavDecoder:
    """Decodes the audio messages of one request, raw PCM or WAV, in order."""

    def __init__(self, *, sample_rate: int, num_channels: int = 1) -> None:
        self._rate = sample_rate
        self._channels = num_channels
        self._header_buf = bytearray()  # an incomplete WAV header waiting for more bytes
        self._remaining: int | None = None  # data bytes left in the current WAV file
        self._in_wav = False
        self._carry = b""  # the start of a frame split across messages
        self._fresh = True  # nothing received yet: a first message "RI" may start a header
        self._trailer_left = 0  # bytes of a chunk after the data still to skip

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because they do not yet form a whole frame."""
        return len(self._carry)

    def feed(self, payload: bytes, *, sample_rate: int | None = None) -> PcmChunk | None:
        """Decode one message's payload; ``sample_rate`` is the rate the message states."""
        if self._header_buf or _starts_riff(payload, at_start=self._fresh):
            buffered = bytes(self._header_buf) + payload
            self._header_buf.clear()
            if len(buffered) >= 4 and buffered[:4] != _RIFF:
                payload = buffered  # a few bytes that looked like "RIF" were PCM after all
            else:
                rest = self._read_header(buffered)
                if rest is None:
                    return None  # still waiting for the rest of the header
                payload = rest
        if sample_rate and not self._in_wav:  # 0 or absent: not stated
            _check_rate(sample_rate, "the message")
        if not self._in_wav and sample_rate and sample_rate != self._rate:
            # raw PCM whose stated rate changed: a sample split across the change is noise
            self._carry = b""
            self._rate = sample_rate
        self._fresh = False
        if self._remaining is not None:
            data = payload[: self._remaining]
            self._remaining -= len(data)
            if self._remaining == 0:
                data += self._after_data(payload[len(data) :])
            payload = data
        return self._aligned(payload)

    def finish(self) -> PcmChunk | None:
        # half a sample at the end of a request is no sound; an unfinished header is nothing
        self._carry = b""
        self._header_buf.clear()
        return None

    def _after_data(self, rest: bytes) -> bytes:
        """Skip the chunks after a sized ``data`` chunk; return audio if the size lied."""
        while rest:
            if self._trailer_left:
                skipped = min(self._trailer_left, len(rest))
                self._trailer_left -= skipped
                rest = rest[skipped:]
            elif _looks_like_chunk_id(rest[:4]):
                if len(rest) < _CHUNK_HEADER.size:
                    return b""  # the start of a trailer chunk: nothing to play
                _, size = _CHUNK_HEADER.unpack_from(rest)
                self._trailer_left = size + (size & 1)
                rest = rest[_CHUNK_HEADER.size :]
            else:
                # not a chunk: the data length was short of the truth, and this is audio
                self._remaining = None
                return rest
        return b""

    def _read_header(self, buffered: bytes) -> bytes | None:
        header = _parse_wav_header(buffered)
        if header is None:
            if len(buffered) > _MAX_HEADER_BYTES:
                raise AudioFormatError("WAV header larger than 64 KiB: not a WAV stream")
            self._header_buf += buffered
            return None
        if (header.sample_rate, header.num_channels) != (self._rate, self._channels):
            self._carry = b""  # a split sample cannot continue in another format
        self._in_wav = True
        self._rate = header.sample_rate
        self._channels = header.num_channels
        self._remaining = header.data_size
        return buffered[header.data_offset :]

    def _aligned(self, payload: bytes) -> PcmChunk | None:
        frame_bytes = 2 * self._channels
        data = self._carry + payload if self._carry else payload
        usable = len(data) - len(data) % frame_bytes
        self._carry = data[usable:]
        if not usable:
            return None
        return PcmChunk(
            pcm=data[:usable] if usable != len(data) else data,
            sample_rate=self._rate,
            num_channels=self._channels,
        )


def _starts_riff(payload: bytes, *, at_start: bool) -> bool:
    # a RIFF tag can only be a header at the start of a message; inside a message it is data.
    # The very first message of a request may even hold just the first bytes of the tag.
    if payload[:4] == _RIFF:
        return True
    return at_start and 0 < len(payload) < 4 and _RIFF.startswith(payload)


def _looks_like_chunk_id(tag: bytes) -> bool:
    # only chunk ids that writers really put after audio: loud 16-bit samples are printable
    # ASCII often enough that "any printable tag" would throw away speech
    if len(tag) < 4:
        return any(known.startswith(tag) for known in _TRAILER_CHUNKS)
    return tag in _TRAILER_CHUNKS


def _parse_wav_header(buf: bytes) -> _WavHeader | None:
    """Parse up to the start of the ``data`` chunk; ``None`` if more bytes are needed."""
    if len(buf) < 12:
        return None
    if buf[:4] != _RIFF or buf[8:12] != _WAVE:
        raise AudioFormatError("payload starts with RIFF but is not a WAVE file")
    offset = 12
    fmt: tuple[int, int] | None = None
    while True:
        if len(buf) < offset + _CHUNK_HEADER.size:
            return None
        chunk_id, chunk_size = _CHUNK_HEADER.unpack_from(buf, offset)
        body = offset + _CHUNK_HEADER.size
        if chunk_id == b"data":
            if fmt is None:
                raise AudioFormatError("WAV data chunk comes before its fmt chunk")
            size = None if chunk_size in _STREAMING_SIZES else chunk_size
            return _WavHeader(
                sample_rate=fmt[0], num_channels=fmt[1], data_offset=body, data_size=size
            )
        end = body + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes
        if len(buf) < end:
            return None
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(buf[body : body + chunk_size])
        offset = end


def _parse_fmt(body: bytes) -> tuple[int, int]:
    if len(body) < _FMT.size:
        raise AudioFormatError("WAV fmt chunk is truncated")
    audio_format, channels, rate, _, _, bits = _FMT.unpack_from(body)
    if audio_format == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
        # the sub-format GUID starts with the real format tag
        (audio_format,) = struct.unpack_from("<H", body, 24)
    if audio_format != _WAVE_FORMAT_PCM or bits != 16:
        raise AudioFormatError(
            f"WAV audio must be 16-bit integer PCM (got format {audio_format}, {bits} bits)"
        )
    if not 1 <= channels <= 8:
        raise AudioFormatError(f"WAV header is implausible: {channels} channels")
    _check_rate(rate, "the WAV header")
    return rate, channels


def _check_rate(rate: int, where: str) -> None:
    # a stated rate is input too: 1 Hz would turn a few bytes into hours of resampled audio
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioFormatError(
            f"{where} states a sample rate of {rate} Hz; a rate from {MIN_SAMPLE_RATE} to "
            f"{MAX_SAMPLE_RATE} Hz is needed"
        )


def wav_header(sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV header for a stream of unknown length.

    Both size fields are 0xFFFFFFFF ("unknown, read to the end"), as streaming servers do:
    the length is not known when the header is sent.
    """
    unknown = 0xFFFFFFFF
    return (
        _RIFF
        + struct.pack("<I", unknown)
        + _WAVE
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


class WavEncoder:
    """One WAV file per request: the header leads the first message, raw PCM follows."""

    def __init__(self, *, sample_rate: int) -> None:
        self._rate = sample_rate
        self._header: bytes | None = wav_header(sample_rate)

    @property
    def sample_rate(self) -> int:
        return self._rate

    def encode(self, pcm: bytes, *, last: bool = False) -> bytes:
        if self._header is None:
            return pcm
        payload, self._header = self._header + pcm, None
        return payload
