"""The names both sides use for speech over HTTP (OpenAI's speech API plus two headers of ours).

The body's fields and their rules are the server's (``tts_server.openai_api``) and the
plugin's translation (``tts_custom.http_speech``); what they must agree on by name is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from .formats import OutputFormat

SPEECH_PATH: Final = "/v1/audio/speech"
MODELS_PATH: Final = "/v1/models"
VOICES_PATH: Final = "/v1/audio/voices"

RATE_HEADER: Final = "X-Sample-Rate"
"""On every audio response of ours: the rate the audio is at (raw PCM says it nowhere else)."""

STREAM_HEADER: Final = "X-Stream-Id"
"""On a request: the reply it belongs to (one request per sentence), as ``stream_id`` on the
WebSocket.  A header, not a body field, so a client sending it still works with servers that
refuse unknown fields (OpenAI's own)."""

OPENAI_PCM_RATE: Final = 24000
"""OpenAI defines ``pcm`` as 24 kHz 16-bit mono; the default rate of every format here."""

CONTENT_TYPES: Final[Mapping[OutputFormat, str]] = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "opus": "audio/ogg",
    "mp3": "audio/mpeg",
}
"""The ``Content-Type`` each format is sent with (what our server says; a client also takes
the names other servers use for them)."""
