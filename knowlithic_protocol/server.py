"""The server's side of one connection, sans-I/O: every request ends exactly once.

Fed the frames a client sends, :meth:`ServerProtocol.receive` returns the message or why it
is not one; :meth:`ServerProtocol.send` returns the frame for a message and keeps the rules:

* An admitted request is in flight from :meth:`start` until its one terminal message
  (``Complete``, ``Complete(cancelled=True)`` or ``Error``).  Every message for it, the
  terminal one included, may only be sent while it is in flight: a second terminal message,
  or audio after the end, is a bug, raised here rather than sent to confuse the client.
* A request refused before it started gets only its ``Error``, sent with :meth:`refuse`;
  a refusal naming a request already in flight (a duplicate id) leaves that one running.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import (
    Audio,
    ClientMessage,
    Complete,
    Error,
    LocalProtocolError,
    ProtocolError,
    ServerMessage,
    WordTimestamps,
)
from .wire import decode_client_message, encode_server_message


@dataclass(frozen=True)
class Invalid:
    """A frame that is not a valid client message: answer with ``error``'s code."""

    error: ProtocolError


class ServerProtocol:
    """The per-request state of one server connection."""

    def __init__(self, *, binary_audio: bool) -> None:
        self.binary_audio = binary_audio  # knowlithic.v1: audio in tagged binary frames
        self._in_flight: set[str] = set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def is_in_flight(self, request_id: str) -> bool:
        return request_id in self._in_flight

    def receive(self, frame: str | bytes) -> ClientMessage | Invalid:
        try:
            return decode_client_message(frame)
        except ProtocolError as e:
            return Invalid(e)

    def start(self, request_id: str) -> None:
        """The request was admitted: its messages may follow."""
        if request_id in self._in_flight:
            raise LocalProtocolError(f"request {request_id!r} is already in flight")
        self._in_flight.add(request_id)

    def send(self, msg: ServerMessage) -> str | bytes:
        """The frame for ``msg``; a terminal message ends its request."""
        if isinstance(msg, Audio | WordTimestamps | Complete | Error):
            request_id = msg.request_id
            if request_id is not None or not isinstance(msg, Error):
                if request_id not in self._in_flight:
                    raise LocalProtocolError(f"{type(msg).__name__} for a request not in flight")
                if isinstance(msg, Complete | Error):
                    self._in_flight.discard(request_id)
        return encode_server_message(msg, binary_audio=self.binary_audio)

    def refuse(self, msg: Error) -> str | bytes:
        """The frame refusing a request that never started, or a frame that was no request."""
        return encode_server_message(msg, binary_audio=self.binary_audio)

    def abandon(self, request_id: str) -> None:
        """The request ended with nobody left to tell (the connection is gone)."""
        self._in_flight.discard(request_id)
