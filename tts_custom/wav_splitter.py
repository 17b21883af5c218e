"""Cut an HTTP response body so that every WAV header in it starts a payload of its own.

Over a WebSocket each message is a unit, and a WAV header can only start one.  An HTTP body is
one byte stream that the network splits anywhere: a server that writes a WAV file per
sentence or per chunk into it (the Tabbly seed does) puts headers mid-chunk, and a header may
itself be split between chunks.  The WAV decoder reads a header only at the start of a
payload, so this re-cuts the stream at each ``RIFF....WAVE`` and holds back only the few bytes
that may yet become one.  Everything else (header parsing, odd byte counts, rates) stays the
decoder's job.
"""

from __future__ import annotations

from typing import Final

_RIFF: Final = b"RIFF"
_WAVE: Final = b"WAVE"
# "RIFF", the 4-byte size, "WAVE": eight fixed bytes, which speech does not produce by chance
_MARK_SIZE: Final = 12


class WavSplitter:
    """Turns the chunks of one body into payloads, each embedded header starting one."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._held + data if self._held else data
        pieces: list[bytes] = []
        start = 0  # where the payload being cut began
        at = buf.find(_RIFF, 1)  # one at 0 starts this payload already
        while at != -1 and len(buf) - at >= _MARK_SIZE:
            if buf[at + 8 : at + _MARK_SIZE] == _WAVE:
                pieces.append(buf[start:at])
                start = at
            at = buf.find(_RIFF, at + 1)
        # a tail too short to judge is held, even a whole buffer (but not a header found)
        first = max(start + 1 if start else 0, len(buf) - _MARK_SIZE + 1)
        hold = next((p for p in range(first, len(buf)) if _may_become_mark(buf[p:])), len(buf))
        if hold > start:
            pieces.append(buf[start:hold])
        self._held = buf[hold:]
        return pieces

    def finish(self) -> bytes:
        """The bytes held back at the end of the body (they were not a header after all)."""
        held, self._held = self._held, b""
        return held


def _may_become_mark(tail: bytes) -> bool:
    """Whether ``tail``, shorter than a mark, is the start of one."""
    if len(tail) <= len(_RIFF):
        return _RIFF.startswith(tail)
    return tail.startswith(_RIFF) and _WAVE.startswith(tail[8:])
