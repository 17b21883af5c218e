"""The Knowlithic TTS protocol: messages, their wire encoding, per-request rules, audio formats.

Sans-I/O and owned by neither side: the plugin (:mod:`tts_custom`) and the server
(:mod:`tts_server`) both stand on it, and it imports neither, nor LiveKit, nor Piper.
MIT licensed, like the plugin.  ``docs/protocol.md`` is the prose specification.

* :mod:`.messages`: what each side may say, as values.
* :mod:`.wire`: messages to WebSocket frames and back, in both dialects.
* :mod:`.client`, :mod:`.server`: the per-request rules each side keeps, fed frames,
  returning events (in the manner of h11 and the ``websockets`` protocol core).
* :mod:`.formats`: the audio payload formats, each an encoder and a decoder.

The names most code needs are re-exported here: ``import knowlithic_protocol as protocol``.
"""

from __future__ import annotations

from .formats import OUTPUT_FORMATS, OutputFormat
from .limits import (
    MAX_BITRATE,
    MAX_REQUEST_ID_LENGTH,
    MAX_SAMPLE_RATE,
    MAX_VOICE_LENGTH,
    MIN_BITRATE,
    MIN_SAMPLE_RATE,
)
from .messages import (
    ERR_BAD_REQUEST,
    ERR_BUSY,
    ERR_DUPLICATE_REQUEST,
    ERR_INTERNAL,
    ERR_RATE_LIMITED,
    ERR_SHUTTING_DOWN,
    ERR_TEXT_TOO_LONG,
    ERR_TOO_MANY_REQUESTS,
    ERR_UNKNOWN_VOICE,
    ERR_UNSUPPORTED,
    PROTOCOL_VERSION,
    RETRYABLE_ERROR_CODES,
    SUBPROTOCOL,
    Audio,
    Cancel,
    Capabilities,
    ClientMessage,
    Complete,
    Error,
    Keepalive,
    Other,
    ProtocolError,
    ServerMessage,
    TextToSpeech,
    WordTimestamps,
    WordTiming,
    error,
)
from .wire import (
    decode_client_message,
    decode_server_message,
    encode_client_message,
    encode_server_message,
)

__version__ = "0.1.0"

__all__ = [
    "ERR_BAD_REQUEST",
    "ERR_BUSY",
    "ERR_DUPLICATE_REQUEST",
    "ERR_INTERNAL",
    "ERR_RATE_LIMITED",
    "ERR_SHUTTING_DOWN",
    "ERR_TEXT_TOO_LONG",
    "ERR_TOO_MANY_REQUESTS",
    "ERR_UNKNOWN_VOICE",
    "ERR_UNSUPPORTED",
    "MAX_BITRATE",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_SAMPLE_RATE",
    "MAX_VOICE_LENGTH",
    "MIN_BITRATE",
    "MIN_SAMPLE_RATE",
    "OUTPUT_FORMATS",
    "PROTOCOL_VERSION",
    "RETRYABLE_ERROR_CODES",
    "SUBPROTOCOL",
    "Audio",
    "Cancel",
    "Capabilities",
    "ClientMessage",
    "Complete",
    "Error",
    "Keepalive",
    "Other",
    "OutputFormat",
    "ProtocolError",
    "ServerMessage",
    "TextToSpeech",
    "WordTimestamps",
    "WordTiming",
    "decode_client_message",
    "decode_server_message",
    "encode_client_message",
    "encode_server_message",
    "error",
]
