"""Ogg pages (RFC 3533), written and read incrementally, sans-I/O.

Ours rather than a muxer's: a muxer decides when a page is full and holds audio back until
it is, where a TTS stream must flush a page with every audio message.  The writer turns
packets into pages on demand; the reader takes bytes in any split and returns each packet
once its page is complete, checking every page (capture pattern, version, CRC, serial
number, sequence) so a corrupt stream is an error, never noise.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .base import AudioFormatError

CAPTURE: Final = b"OggS"
CONTINUED: Final = 0x01
BOS: Final = 0x02  # first page of a logical stream
EOS: Final = 0x04  # last page of a logical stream
_HEADER: Final = struct.Struct("<4sBBqIIIB")  # up to and including the segment count
_MAX_SEGMENTS: Final = 255
MAX_PAGE_SIZE: Final = _HEADER.size + _MAX_SEGMENTS + _MAX_SEGMENTS * 255  # 65307 bytes


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc32(data: bytes) -> int:
    """Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, initial value 0 (not zlib's)."""
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


def page(
    packets: Sequence[bytes], *, serial: int, sequence: int, granule: int, flags: int = 0
) -> bytes:
    """One page holding whole ``packets`` (their lacing must fit in 255 segments)."""
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    if len(lacing) > _MAX_SEGMENTS:
        raise ValueError("packets too large for one Ogg page")
    header = _HEADER.pack(CAPTURE, 0, flags, granule, serial, sequence, 0, len(lacing))
    raw = bytearray(header + lacing + b"".join(packets))
    struct.pack_into("<I", raw, 22, crc32(bytes(raw)))
    return bytes(raw)


def segments_for(packet: bytes) -> int:
    """Lacing values a packet takes on a page."""
    return len(packet) // 255 + 1


@dataclass(frozen=True)
class Page:
    flags: int
    granule: int
    sequence: int
    packets: tuple[bytes, ...]  # the packets that end on this page


class PageReader:
    """Pages from a byte stream fed in any split; one logical stream (one serial number)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._serial: int | None = None
        self._next_sequence = 0
        self._partial = b""  # a packet continued on the next page
        self.ended = False  # the EOS page has been read

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Page]:
        self._buf += data
        pages = []
        while (parsed := self._next_page()) is not None:
            pages.append(parsed)
        return pages

    def _next_page(self) -> Page | None:
        buf = self._buf
        if len(buf) < 4:
            if buf and not CAPTURE.startswith(bytes(buf)):
                raise AudioFormatError("the audio is not an Ogg stream (no OggS page)")
            return None
        if buf[:4] != CAPTURE:
            raise AudioFormatError("the audio is not an Ogg stream, or a page is corrupt")
        if len(buf) < _HEADER.size:
            return None
        _, version, flags, granule, serial, sequence, crc, count = _HEADER.unpack_from(buf)
        if version != 0:
            raise AudioFormatError(f"Ogg page version {version} (only 0 exists)")
        end_of_lacing = _HEADER.size + count
        if len(buf) < end_of_lacing:
            return None
        lacing = buf[_HEADER.size : end_of_lacing]
        size = end_of_lacing + sum(lacing)
        if len(buf) < size:
            return None
        raw = bytearray(buf[:size])
        struct.pack_into("<I", raw, 22, 0)
        if crc32(bytes(raw)) != crc:
            raise AudioFormatError("an Ogg page failed its CRC check: the audio is corrupt")
        self._check_order(flags, serial, sequence)
        packets = self._packets(flags, bytes(lacing), bytes(buf[end_of_lacing:size]))
        del self._buf[:size]
        if flags & EOS:
            self.ended = True
        return Page(flags, granule, sequence, packets)

    def _check_order(self, flags: int, serial: int, sequence: int) -> None:
        if self.ended:
            raise AudioFormatError("an Ogg page came after the end of the stream")
        if self._serial is None:
            if not flags & BOS:
                raise AudioFormatError("the Ogg stream does not start with its first page")
            self._serial = serial
        elif serial != self._serial:
            raise AudioFormatError("an Ogg page belongs to another stream (serial number)")
        elif flags & BOS:
            raise AudioFormatError("a second first page (BOS) in one Ogg stream")
        if sequence != self._next_sequence:
            raise AudioFormatError(
                f"Ogg page {sequence} came where page {self._next_sequence} was due: "
                "pages are missing"
            )
        self._next_sequence = sequence + 1

    def _packets(self, flags: int, lacing: bytes, body: bytes) -> tuple[bytes, ...]:
        if bool(flags & CONTINUED) != bool(self._partial):
            raise AudioFormatError("an Ogg page's continuation flag does not match the stream")
        packets = []
        current = self._partial
        position = 0
        for value in lacing:
            current += body[position : position + value]
            position += value
            if value < 255:
                packets.append(current)
                current = b""
        self._partial = current
        return tuple(packets)
