"""Ogg pages (RFC 3533), written and read incrementally, sans-I/O.

Ours rather than a muxer's: a muxer decides when a page is full and holds audio back until
it is, where a TTS stream must flush a page with every audio message.  The writer turns
packets into pages on demand; the reader takes bytes in any split and returns each packet
once its page is complete, checking every page (capture pattern, version, flags, CRC,
serial number, sequence) so a corrupt stream is an error, never noise.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .base import AudioFormatError

CAPTURE: Final = b"OggS"
CONTINUED: Final = 0x01  # the page starts with the rest of the previous page's last packet
BOS: Final = 0x02  # first page of a logical stream
EOS: Final = 0x04  # last page of a logical stream
NO_GRANULE: Final = -1  # the granule position of a page on which no packet ends
_FLAGS: Final = CONTINUED | BOS | EOS
_HEADER: Final = struct.Struct("<4sBBqIIIB")  # up to and including the segment count
_CRC_OFFSET: Final = 22
_MAX_SEGMENTS: Final = 255
MAX_PAGE_SIZE: Final = _HEADER.size + _MAX_SEGMENTS + _MAX_SEGMENTS * 255  # 65307 bytes
# a packet may span pages without end: the reader holds at most this much of one
MAX_PACKET_SIZE: Final = 1 << 20

# Ogg's CRC is the MSB-first CRC-32 (polynomial 0x04C11DB7, initial value 0, no final xor).
# zlib's is the same polynomial LSB-first, with 0xFFFFFFFF in and out: on bit-reversed bytes
# it computes the bit-reversed Ogg CRC, and XOR-ing zlib's CRC of as many zero bytes cancels
# its initial and final values.  ~2 ns a byte in C, where a table-driven Python loop takes
# ~150 (the tests check it against a bit-by-bit reference).
_REVERSED: Final = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def crc32(data: bytes) -> int:
    """Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, initial value 0 (not zlib's)."""
    reflected = zlib.crc32(data.translate(_REVERSED)) ^ zlib.crc32(bytes(len(data)))
    return int.from_bytes(reflected.to_bytes(4, "little").translate(_REVERSED), "big")


def _segments(size: int) -> int:
    return size // 255 + 1


def _lacing(size: int, *, ends: bool) -> bytes:
    # a packet ends with a lacing value under 255 (0 if its size is a multiple of 255)
    return b"\xff" * (size // 255) + (bytes([size % 255]) if ends else b"")


def page(
    packets: Sequence[bytes], *, serial: int, sequence: int, granule: int, flags: int = 0
) -> bytes:
    """One page holding whole ``packets`` (their lacing must fit in 255 segments)."""
    lacing = b"".join(_lacing(len(p), ends=True) for p in packets)
    return _page(
        lacing, b"".join(packets), serial=serial, sequence=sequence, granule=granule, flags=flags
    )


def _page(
    lacing: bytes, body: bytes, *, serial: int, sequence: int, granule: int, flags: int
) -> bytes:
    if len(lacing) > _MAX_SEGMENTS:
        raise ValueError("packets too large for one Ogg page")
    if flags & ~_FLAGS:
        raise ValueError(f"unknown Ogg page flags {flags:#x}")
    header = _HEADER.pack(CAPTURE, 0, flags, granule, serial, sequence, 0, len(lacing))
    raw = bytearray(header + lacing + body)
    struct.pack_into("<I", raw, _CRC_OFFSET, crc32(bytes(raw)))
    return bytes(raw)


class PageWriter:
    """The pages of one logical stream: its serial number, and the page sequence so far."""

    def __init__(self, serial: int) -> None:
        if not 0 <= serial <= 0xFFFFFFFF:
            raise ValueError("an Ogg serial number is 32 bits")
        self.serial = serial
        self.sequence = 0  # of the next page
        self.ended = False

    def write(
        self, packets: Sequence[tuple[bytes, int]], *, first: bool = False, last: bool = False
    ) -> bytes:
        """Pages holding ``packets``, each with the granule position at its end, flushed now.

        As few pages as the 255-segment limit allows: a packet that does not fit on the
        current page starts the next one, and only a packet too large for any page is split
        (the next page then has the ``CONTINUED`` flag).  ``first`` marks the stream's first
        page (BOS), ``last`` its final page (EOS), written even if no packet is left for it."""
        if self.ended:
            raise ValueError("the Ogg stream has ended")
        out = bytearray()
        lacing, body = bytearray(), bytearray()
        granule, flags = NO_GRANULE, BOS if first else 0

        def flush(final: bool) -> None:
            nonlocal granule, flags
            raw = _page(
                bytes(lacing),
                bytes(body),
                serial=self.serial,
                sequence=self.sequence,
                granule=granule,
                flags=flags | (EOS if final else 0),
            )
            out.extend(raw)
            self.sequence += 1
            lacing.clear()
            body.clear()
            granule, flags = NO_GRANULE, 0

        for packet, packet_granule in packets:
            if lacing and len(lacing) + _segments(len(packet)) > _MAX_SEGMENTS:
                flush(final=False)
            rest = memoryview(packet)
            while len(lacing) + _segments(len(rest)) > _MAX_SEGMENTS:
                room = (_MAX_SEGMENTS - len(lacing)) * 255  # all 255s: the packet goes on
                lacing += _lacing(room, ends=False)
                body += rest[:room]
                rest = rest[room:]
                flush(final=False)
                flags = CONTINUED
            lacing += _lacing(len(rest), ends=True)
            body += rest
            granule = packet_granule
        if lacing or last or flags & BOS:  # a first page is written even without packets
            flush(final=last)
        self.ended = last
        return bytes(out)


@dataclass(frozen=True)
class Page:
    flags: int
    granule: int  # NO_GRANULE (-1) when no packet ends on the page
    sequence: int
    packets: tuple[bytes, ...]  # the packets that end on this page


class PageReader:
    """Pages from a byte stream fed in any split; one logical stream (one serial number)."""

    def __init__(self, *, max_packet: int = MAX_PACKET_SIZE) -> None:
        self._buf = bytearray()
        self._serial: int | None = None
        self._next_sequence = 0
        self._partial = bytearray()  # a packet continued on the next page
        self._continues = False  # the last page ended inside a packet
        self._max_packet = max_packet
        self.ended = False  # the EOS page has been read

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete page held until the rest arrives."""
        return len(self._buf)

    @property
    def pending_packet_bytes(self) -> int:
        """Bytes of a packet whose end is on a page still to come."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Page]:
        """The pages ``data`` completes, in order; :class:`AudioFormatError` for a bad one."""
        self._buf += data
        pages = []
        while (parsed := self._next_page()) is not None:
            pages.append(parsed)
        return pages

    def _next_page(self) -> Page | None:
        buf = self._buf
        if len(buf) < len(CAPTURE):
            if buf and not CAPTURE.startswith(bytes(buf)):
                raise AudioFormatError(self._not_a_page())
            return None
        if buf[:4] != CAPTURE:
            raise AudioFormatError(self._not_a_page())
        if len(buf) < _HEADER.size:
            return None
        _, version, flags, granule, serial, sequence, crc, count = _HEADER.unpack_from(buf)
        if version != 0:
            raise AudioFormatError(f"Ogg page version {version} (only version 0 exists)")
        if flags & ~_FLAGS:
            raise AudioFormatError(f"Ogg page has unknown header flags {flags:#04x}")
        end_of_lacing = _HEADER.size + count
        if len(buf) < end_of_lacing:
            return None
        lacing = bytes(buf[_HEADER.size : end_of_lacing])
        size = end_of_lacing + sum(lacing)  # at most MAX_PAGE_SIZE by construction
        if len(buf) < size:
            return None
        raw = bytearray(buf[:size])
        struct.pack_into("<I", raw, _CRC_OFFSET, 0)
        if crc32(bytes(raw)) != crc:
            raise AudioFormatError(
                f"Ogg page {sequence} failed its CRC check: the audio is corrupt"
            )
        self._check_order(flags, serial, sequence)
        packets = self._packets(flags, lacing, bytes(buf[end_of_lacing:size]))
        del self._buf[:size]
        if flags & EOS:
            self.ended = True
        return Page(flags, granule, sequence, packets)

    def _not_a_page(self) -> str:
        if self._serial is None:
            return "the audio is not an Ogg stream (it does not start with an OggS page)"
        return f"bytes after Ogg page {self._next_sequence - 1} are not an Ogg page: corrupt"

    def _check_order(self, flags: int, serial: int, sequence: int) -> None:
        if self.ended:
            raise AudioFormatError("an Ogg page came after the end of the stream (EOS)")
        if self._serial is None:
            if not flags & BOS:
                raise AudioFormatError(
                    f"the Ogg stream does not start with its first page (BOS): page {sequence} "
                    "came first"
                )
            self._serial = serial
        elif serial != self._serial:
            raise AudioFormatError(
                f"an Ogg page of stream {serial:#010x} came in stream {self._serial:#010x}"
            )
        elif flags & BOS:
            raise AudioFormatError("a second first page (BOS) in one Ogg stream")
        if sequence != self._next_sequence:
            raise AudioFormatError(
                f"Ogg page {sequence} came where page {self._next_sequence} was due: "
                "pages are missing"
            )
        self._next_sequence = sequence + 1

    def _packets(self, flags: int, lacing: bytes, body: bytes) -> tuple[bytes, ...]:
        if bool(flags & CONTINUED) != self._continues:
            raise AudioFormatError(
                "an Ogg page's continued-packet flag does not match the page before it"
            )
        packets = []
        position = 0
        for value in lacing:
            self._partial += body[position : position + value]
            position += value
            if len(self._partial) > self._max_packet:
                raise AudioFormatError(
                    f"an Ogg packet is larger than {self._max_packet} bytes: refused"
                )
            if value < 255:
                packets.append(bytes(self._partial))
                self._partial.clear()
        if lacing:  # a page without segments leaves a packet as unfinished as it was
            self._continues = lacing[-1] == 255
        return tuple(packets)
