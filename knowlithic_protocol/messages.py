"""The messages of the Knowlithic TTS protocol, as plain values.

What each side may say, with no encoding and no I/O: :mod:`.wire` turns them into WebSocket
frames and back, :mod:`.client` and :mod:`.server` hold the per-request rules.
``docs/protocol.md`` is the prose specification.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from .formats import OutputFormat

PROTOCOL_VERSION: Final = 1
SUBPROTOCOL: Final = "knowlithic.v1"

# Error codes the server sends.  Clients treat unknown codes as not retryable unless the
# message says otherwise.
ERR_BAD_REQUEST: Final = "bad_request"
ERR_UNKNOWN_VOICE: Final = "unknown_voice"
ERR_UNSUPPORTED: Final = "unsupported"
ERR_TEXT_TOO_LONG: Final = "text_too_long"
ERR_DUPLICATE_REQUEST: Final = "duplicate_request_id"
ERR_TOO_MANY_REQUESTS: Final = "too_many_requests"
ERR_BUSY: Final = "busy"
ERR_RATE_LIMITED: Final = "rate_limited"
ERR_INTERNAL: Final = "internal"
ERR_SHUTTING_DOWN: Final = "shutting_down"
RETRYABLE_ERROR_CODES: Final = frozenset(
    {ERR_TOO_MANY_REQUESTS, ERR_BUSY, ERR_RATE_LIMITED, ERR_INTERNAL, ERR_SHUTTING_DOWN}
)


class ProtocolError(ValueError):
    """A frame that is not a valid protocol message.

    ``code`` is the error code a server answers with; ``request_id`` is set when the frame
    was readable enough to name the request it belongs to.
    """

    def __init__(
        self, message: str, *, code: str = ERR_BAD_REQUEST, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class LocalProtocolError(RuntimeError):
    """This side broke the protocol's rules: a bug in the caller, not in the peer."""


# ---------------------------------------------------------------------------------------------
# client -> server


@dataclass(frozen=True)
class TextToSpeech:
    """Synthesize ``text`` and stream its audio back, tagged with ``request_id``.

    ``stream_id`` groups the requests of one reply (one per sentence): a server admits or
    refuses a reply as a whole, so a reply it started is never cut off for lack of capacity.
    """

    request_id: str
    text: str
    voice: str
    sample_rate: int
    output_format: OutputFormat = "wav"
    word_timestamps: bool = False
    stream_id: str | None = None
    bitrate: int | None = None  # bit/s, for a compressed format; None: the server's default


@dataclass(frozen=True)
class Cancel:
    """Stop a request.  The server ends it with ``Complete(cancelled=True)``."""

    request_id: str


@dataclass(frozen=True)
class Keepalive:
    """Application-level keepalive for peers that do not answer WebSocket pings."""


ClientMessage: TypeAlias = TextToSpeech | Cancel | Keepalive


# ---------------------------------------------------------------------------------------------
# server -> client


@dataclass(frozen=True)
class Capabilities:
    """What a ``knowlithic.v1`` server offers; its first message on every connection."""

    protocol_version: int
    voices: tuple[str, ...]
    output_formats: tuple[str, ...]
    sample_rates: tuple[int, ...]
    word_timestamps: bool = False
    max_text_length: int | None = None
    max_requests_in_flight: int | None = None


@dataclass(frozen=True)
class Audio:
    """A piece of a request's audio: raw s16le PCM or (part of) a WAV file.

    ``request_id`` is ``None`` when the server did not say which request it belongs to.
    ``sample_rate`` is the rate of raw PCM as the server states it, if it does.
    """

    request_id: str | None
    data: bytes
    sample_rate: int | None = None
    sequence: int | None = None


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class WordTimestamps:
    """Word times in seconds from the start of the request's audio.

    ``estimated`` marks times derived from phoneme counts rather than the engine's alignment.
    """

    request_id: str | None
    words: tuple[WordTiming, ...]
    estimated: bool = False


@dataclass(frozen=True)
class Complete:
    """The request has ended; no more messages follow for it."""

    request_id: str | None
    cancelled: bool = False


@dataclass(frozen=True)
class Error:
    """The server refused or failed a request (or the connection, with no request id)."""

    request_id: str | None
    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True)
class Other:
    """A message type this protocol does not define (``ready``, ``audio_start``, ...)."""

    type: str
    request_id: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


ServerMessage: TypeAlias = Capabilities | Audio | WordTimestamps | Complete | Error | Other


def error(
    code: str, message: str, *, request_id: str | None = None, retryable: bool | None = None
) -> Error:
    """An :class:`Error` whose retryability follows from its code unless given."""
    if retryable is None:
        retryable = code in RETRYABLE_ERROR_CODES
    return Error(request_id=request_id, code=code, message=message, retryable=retryable)
