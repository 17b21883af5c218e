"""OpenAI's speech API in the protocol's terms: URLs, the request body, and what an answer means.

``POST {base}/v1/audio/speech`` with a JSON body (``model``, ``input``, ``voice``,
``response_format``; ``sample_rate`` and ``bitrate`` are this project's extensions) answers
with the audio as a chunked body, or with an OpenAI-style JSON error.  This module only
translates: a ``text_to_speech`` request to a body, a response's headers to the format and rate
of its audio, a refusal to the protocol's :class:`~knowlithic_protocol.Error` (so the
synthesis treats it exactly like the same refusal over the WebSocket).  No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import knowlithic_protocol as protocol
from knowlithic_protocol.http import (
    CONTENT_TYPES,
    MODELS_PATH,
    OPENAI_PCM_RATE,
    RATE_HEADER,
    SPEECH_PATH,
    STREAM_HEADER,
)

from .errors import ERR_UNAUTHORIZED

DEFAULT_MODEL: Final = "knowlithic"
_HTTP_SCHEMES: Final = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
# paths that name an endpoint on the base URL rather than the base: dropped
_ENDPOINT_SUFFIXES: Final = ("/v1/tts", "/v1")
# ours, and the names other servers give the same formats
_CONTENT_FORMATS: Final[Mapping[str, protocol.OutputFormat]] = {
    **{media: fmt for fmt, media in CONTENT_TYPES.items()},
    "audio/l16": "pcm",
    "audio/raw": "pcm",
    "application/octet-stream": "pcm",
    "audio/wave": "wav",
    "audio/x-wav": "wav",
    "audio/vnd.wave": "wav",
    "audio/opus": "opus",
    "audio/mp3": "mp3",
}
# one decoder takes both raw PCM and WAV (servers mislabel one as the other)
_WAV_FAMILY: Final = frozenset({"pcm", "wav"})
_MAX_MESSAGE: Final = 300  # of a server's error message quoted in ours
# what the server says about itself as an HTTP endpoint: no word timings, and the formats
# OpenAI's API defines (so every compatible server takes them); voices and rates are not
# listed anywhere standard, so an unknown one is the server's 4xx, which names it
CAPABILITIES: Final = protocol.Capabilities(
    protocol_version=protocol.PROTOCOL_VERSION,
    voices=(),
    output_formats=protocol.OUTPUT_FORMATS,
    sample_rates=(),
    word_timestamps=False,
)


@dataclass(frozen=True)
class Endpoints:
    speech: str
    models: str

    @classmethod
    def of(cls, base_url: str) -> Endpoints:
        """The endpoints of a base URL (any of ws, wss, http, https; as configured)."""
        parts = urlsplit(base_url)
        scheme = _HTTP_SCHEMES.get(parts.scheme.lower(), parts.scheme)
        path = parts.path.rstrip("/")
        for suffix in _ENDPOINT_SUFFIXES:
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break

        def at(endpoint: str) -> str:
            return urlunsplit((scheme, parts.netloc, path + endpoint, parts.query, ""))

        return cls(speech=at(SPEECH_PATH), models=at(MODELS_PATH))


def request_body(msg: protocol.TextToSpeech, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "input": msg.text,
        "voice": msg.voice,
        "response_format": msg.output_format,
    }
    if msg.sample_rate != OPENAI_PCM_RATE:  # ours: OpenAI's own API refuses fields it lacks
        body["sample_rate"] = msg.sample_rate
    if msg.bitrate is not None:
        body["bitrate"] = msg.bitrate
    return body


def request_headers(msg: protocol.TextToSpeech) -> dict[str, str]:
    """Ours, which other servers ignore: the request's id (for logs) and its reply's."""
    headers = {"X-Request-Id": msg.request_id}
    if msg.stream_id is not None:
        headers[STREAM_HEADER] = msg.stream_id
    return headers


@dataclass(frozen=True)
class AudioStream:
    """How to read a response's body: its format, and the rate its raw PCM is at."""

    output_format: protocol.OutputFormat
    sample_rate: int | None  # None: the WAV header's, or the rate asked for


def audio_stream(
    headers: Mapping[str, str], asked: protocol.OutputFormat, request_id: str
) -> AudioStream | protocol.Error:
    """What a 200 response carries, from its headers; an error for audio we cannot play."""
    content_type = headers.get("Content-Type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    found = _CONTENT_FORMATS.get(media) if media else asked
    if found is None or (found != asked and not {found, asked} <= _WAV_FAMILY):
        return protocol.error(
            protocol.ERR_UNSUPPORTED,
            f"asked for {asked} audio, the server sent {media or 'no Content-Type'}",
            request_id=request_id,
            retryable=False,
        )
    rate = _stated_rate(headers, content_type)
    if rate is not None and not protocol.MIN_SAMPLE_RATE <= rate <= protocol.MAX_SAMPLE_RATE:
        return protocol.error(
            protocol.ERR_UNSUPPORTED,
            f"the server sent audio at {rate} Hz; the plugin plays {protocol.MIN_SAMPLE_RATE} "
            f"to {protocol.MAX_SAMPLE_RATE} Hz",
            request_id=request_id,
            retryable=False,
        )
    if rate is None and found == "pcm":
        rate = OPENAI_PCM_RATE
    return AudioStream(found, rate)


def _stated_rate(headers: Mapping[str, str], content_type: str) -> int | None:
    """X-Sample-Rate, else a ``rate=`` parameter (``audio/L16; rate=24000``)."""
    candidates = [headers.get(RATE_HEADER, "")]
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "rate":
            candidates.append(value)
    for raw in candidates:
        # ASCII digits only: "²".isdigit() is True, and int() refuses it
        if (digits := raw.strip()).isascii() and digits.isdigit():
            return int(digits[:12])  # audio_stream bounds it (a stated rate is input too)
    return None


def refusal(status: int, body: bytes, request_id: str) -> protocol.Error:
    """A non-200 answer, as the protocol's error: the code decides whether it is retried
    (busy moves the reply to another server) and the message names the server's reason."""
    code, message, param = _openai_error(body)
    reason = message or f"HTTP {status}"
    if param:
        reason = f"{reason} (field {param!r})"
    if status in (401, 403):
        return protocol.error(
            ERR_UNAUTHORIZED,
            f"the server refused the API key (HTTP {status}); check KNOWLITHIC_API_KEY",
            request_id=request_id,
            retryable=False,
        )
    if status == 503:
        gone = code == protocol.ERR_SHUTTING_DOWN
        return protocol.error(
            protocol.ERR_SHUTTING_DOWN if gone else protocol.ERR_BUSY,
            f"HTTP 503: {reason}",
            request_id=request_id,
        )
    if status == 429:
        return protocol.error(
            protocol.ERR_RATE_LIMITED, f"HTTP 429: {reason}", request_id=request_id
        )
    if status >= 500 or status == 408:
        return protocol.error(
            protocol.ERR_INTERNAL, f"HTTP {status}: {reason}", request_id=request_id
        )
    if 300 <= status < 400:  # the transport follows no redirect: the text stays here
        reason = "the server redirects the request elsewhere; set base_url to the server itself"
    elif status == 404 and not message:
        reason = f"no POST {SPEECH_PATH} on this server"
    known = code if code in _REQUEST_CODES else protocol.ERR_BAD_REQUEST
    return protocol.error(known, f"HTTP {status}: {reason}", request_id=request_id, retryable=False)


# codes a server may put in its error body that mean the same as ours
_REQUEST_CODES: Final = frozenset(
    {
        protocol.ERR_BAD_REQUEST,
        protocol.ERR_UNKNOWN_VOICE,
        protocol.ERR_UNSUPPORTED,
        protocol.ERR_TEXT_TOO_LONG,
    }
)


def _openai_error(body: bytes) -> tuple[str | None, str | None, str | None]:
    """``(code, message, param)`` from ``{"error": {...}}`` (or ``{"error": "code",
    "message": ...}``); all None for a body that is neither."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    error = data.get("error")
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message, param = error.get("message"), error.get("param")
    else:
        code, message, param = error, data.get("message"), None
    return _text(code), _short(_text(message)), _text(param)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _short(message: str | None) -> str | None:
    if message is None or len(message) <= _MAX_MESSAGE:
        return message
    return message[: _MAX_MESSAGE - 1] + "…"
