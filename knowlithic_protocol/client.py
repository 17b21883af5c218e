"""The client's side of one connection, sans-I/O: which request each server message is for.

Fed the frames the socket receives, :meth:`ClientProtocol.receive` returns one event per
frame; :meth:`ClientProtocol.send` returns the frame to write.  The caller owns the socket,
the clocks and the queues; this class owns the rules:

* A request is open from :meth:`open_request` until its one terminal message
  (``Complete`` or ``Error``), or until the client closes it (a cancel, a timeout).  Anything
  the server sends for it after that is :class:`Ignored`, which is what keeps a cancelled
  reply's late audio out of the next turn.
* ``knowlithic.v1`` servers tag every message with its request id; a message with none is
  about the connection.  Legacy servers tag nothing: an untagged message belongs to the
  request the server last named, else to the oldest open request, since such servers answer
  one request at a time in the order they were sent.  Such a peer cannot keep a cancelled
  request's late audio apart from the next one's, so :attr:`untagged_peer` tells the caller
  to cancel by closing the socket instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from .messages import (
    Audio,
    Cancel,
    Capabilities,
    ClientMessage,
    Complete,
    Error,
    LocalProtocolError,
    Other,
    ProtocolError,
    TextToSpeech,
    WordTimestamps,
)
from .wire import decode_server_message, encode_client_message


@dataclass(frozen=True)
class RequestMessage:
    """A server message for an open request.  ``final``: it was the request's terminal
    message, and the request is closed now."""

    request_id: str
    message: Audio | WordTimestamps | Complete | Error
    final: bool


@dataclass(frozen=True)
class ConnectionMessage:
    """A message about the connection: its capabilities, or an error naming no request."""

    message: Capabilities | Error


@dataclass(frozen=True)
class Ignored:
    """A frame with nothing to act on, and why (for the log: never the frame itself)."""

    reason: Literal["malformed", "unknown type", "request not open"]
    detail: str
    request_id: str | None = None


ClientEvent: TypeAlias = RequestMessage | ConnectionMessage | Ignored


class ClientProtocol:
    """The per-request state of one client connection."""

    def __init__(self, *, tagged: bool) -> None:
        self.tagged = tagged  # negotiated knowlithic.v1: tagged binary audio, ids on everything
        self.untagged_peer = False  # the server sent a message with no request id
        self.capabilities: Capabilities | None = None
        self._open: dict[str, None] = {}  # insertion-ordered: the oldest request first
        self._last_named: str | None = None

    @property
    def open_requests(self) -> tuple[str, ...]:
        return tuple(self._open)

    def is_open(self, request_id: str) -> bool:
        return request_id in self._open

    def open_request(self, request_id: str) -> None:
        """Start taking messages for ``request_id``; before its request is sent."""
        if request_id in self._open:
            raise LocalProtocolError(f"request {request_id!r} is already open")
        self._open[request_id] = None

    def close_request(self, request_id: str) -> None:
        """Stop taking messages for ``request_id``: whatever follows for it is ignored."""
        self._open.pop(request_id, None)
        if self._last_named == request_id:
            self._last_named = None

    def send(self, msg: ClientMessage) -> str:
        """The frame for ``msg``.  A request must be open; a cancel closes it."""
        if isinstance(msg, TextToSpeech) and msg.request_id not in self._open:
            raise LocalProtocolError(f"open request {msg.request_id!r} before sending it")
        if isinstance(msg, Cancel):
            self.close_request(msg.request_id)
        return encode_client_message(msg)

    def receive(self, frame: str | bytes) -> ClientEvent:
        """The event one received frame makes."""
        try:
            msg = decode_server_message(frame, tagged_binary=self.tagged)
        except ProtocolError as e:
            return Ignored("malformed", str(e), e.request_id)
        if isinstance(msg, Capabilities):
            self.capabilities = msg
            return ConnectionMessage(msg)
        if isinstance(msg, Other):
            if msg.request_id in self._open:
                self._last_named = msg.request_id  # "audio_start" for it: what follows is its
            return Ignored("unknown type", msg.type, msg.request_id)
        request_id = self._attribute(msg.request_id)
        if request_id is None:
            if isinstance(msg, Error) and msg.request_id is None:
                return ConnectionMessage(msg)
            return Ignored("request not open", type(msg).__name__, msg.request_id)
        final = isinstance(msg, Complete | Error)
        if final:
            # closed now: the next untagged message already belongs to the next request
            self.close_request(request_id)
        return RequestMessage(request_id, msg, final)

    def _attribute(self, request_id: str | None) -> str | None:
        if request_id is not None:
            if request_id not in self._open:
                return None
            self._last_named = request_id
            return request_id
        if self.tagged:
            return None  # knowlithic.v1 tags everything: no id means it is about the connection
        self.untagged_peer = True
        if self._last_named is not None:
            return self._last_named
        return next(iter(self._open), None)
