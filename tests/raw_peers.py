"""Peers that misbehave below the WebSocket layer, on raw TCP sockets.

* :class:`HangingUpgrade` accepts the TCP connection, reads the upgrade request, and never
  answers it.
* :class:`DeafPeer` completes the WebSocket handshake properly, then never sends anything and
  never answers a close frame, like a process that froze; with ``subprotocol``, it agrees to
  it (and then never sends the capabilities that subprotocol promises).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

from tests.loopback import LoopbackServer

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _RawServer(LoopbackServer):
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        await self._answer(request, writer)
        while await reader.read(65536):  # read and ignore everything, answer nothing
            pass

    async def _answer(self, request: bytes, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class HangingUpgrade(_RawServer):
    async def _answer(self, request: bytes, writer: asyncio.StreamWriter) -> None:
        pass


class DeafPeer(_RawServer):
    def __init__(self, *, subprotocol: str | None = None) -> None:
        super().__init__()
        self._subprotocol = subprotocol

    async def _answer(self, request: bytes, writer: asyncio.StreamWriter) -> None:
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        agreed = (
            b"Sec-WebSocket-Protocol: " + self._subprotocol.encode() + b"\r\n"
            if self._subprotocol
            else b""
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n" + agreed + b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await writer.drain()
