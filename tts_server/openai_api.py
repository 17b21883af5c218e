"""OpenAI's speech API as this server reads it: a request body to a ``TextToSpeech``, and
every refusal as OpenAI's error object.  Pure: no I/O, no server state, so each rule is a
function a test calls with a value.

The body (``POST /v1/audio/speech``, JSON) has OpenAI's fields and two of ours:

* ``input`` (required): the text, non-empty after stripping, at most the server's limit;
* ``model``: any string, ignored (``tts-1``, ``gpt-4o-mini-tts``...: there is one engine);
* ``voice``: a voice or alias of the server (case-insensitive), or one of OpenAI's stock names
  (``alloy``, ``ash``...), which mean the server's default voice unless the server has a voice
  or alias of that name; omitted, the default voice (the first loaded);
* ``response_format``: ``mp3`` (the default, as OpenAI's), ``opus`` (Ogg), ``wav`` (a header
  of unknown length, then the samples), ``pcm`` (raw s16le mono) and nothing else;
* ``speed``: 0.25 to 4.0 as OpenAI's: the pace against the server's own (Piper's phoneme
  lengths, and the pauses, divided by it);
* ``instructions``: a string, accepted and ignored (Piper takes no direction);
* ``stream_format``: ``audio`` (the default: the body is the file, chunked) or ``sse``
  (OpenAI's server-sent events, base64 audio in ``speech.audio.delta`` events);
* ``sample_rate`` (ours): 8000 to 48000 Hz, default 24000, OpenAI's rate for every format
  (Opus and MP3 take the nearest rate their codec has; ``X-Sample-Rate`` says which);
* ``bitrate`` (ours): Opus's bit rate, 6000 to 64000 bit/s.

One header of ours: ``X-Stream-Id`` groups the requests of one reply (one per sentence), as
``stream_id`` does on the WebSocket: the reply is admitted or refused as a whole at its first
sentence, and its later sentences are rendered by when their listener needs them.  A header,
not a body field, so a client that sends it still works with OpenAI's own API.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import knowlithic_protocol as protocol
from knowlithic_protocol import http
from knowlithic_protocol.limits import (
    MAX_BITRATE,
    MAX_SAMPLE_RATE,
    MAX_VOICE_LENGTH,
    MIN_BITRATE,
    MIN_SAMPLE_RATE,
)
from knowlithic_protocol.wire import is_int, is_utf8

ResponseFormat: TypeAlias = Literal["mp3", "opus", "wav", "pcm"]
StreamFormat: TypeAlias = Literal["audio", "sse"]

# In OpenAI's order; the first is the default, as OpenAI's is.
RESPONSE_FORMATS: Final[tuple[ResponseFormat, ...]] = ("mp3", "opus", "wav", "pcm")
CONTENT_TYPES: Final = http.CONTENT_TYPES
SSE_CONTENT_TYPE: Final = "text/event-stream"
DEFAULT_SAMPLE_RATE: Final = http.OPENAI_PCM_RATE  # for every format
MIN_SPEED: Final = 0.25
MAX_SPEED: Final = 4.0
# OpenAI's stock voices: a client written for OpenAI names one of them, and gets the default.
OPENAI_VOICES: Final = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)
# What /v1/models lists: OpenAI's speech models, all of which name this server's one engine.
MODELS: Final = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OWNER: Final = "knowlithic"

ErrorType: TypeAlias = Literal[
    "invalid_request_error", "authentication_error", "rate_limit_error", "server_error"
]


@dataclass(frozen=True)
class ApiError:
    """An OpenAI-style error: the HTTP status and the body's ``error`` object."""

    status: int
    message: str
    type: ErrorType = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after: int | None = None  # seconds, for a Retry-After header

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class SpeechRequest:
    """A valid body; ``voice`` is the server's name for it (stock names already mapped)."""

    input: str
    voice: str
    response_format: ResponseFormat
    stream_format: StreamFormat
    sample_rate: int
    bitrate: int | None
    speed: float = 1.0

    def message(self, request_id: str, stream_id: str | None = None) -> protocol.TextToSpeech:
        """The request as the protocol's message: what admission and rendering take."""
        return protocol.TextToSpeech(
            request_id=request_id,
            stream_id=stream_id,
            text=self.input,
            voice=self.voice,
            sample_rate=self.sample_rate,
            output_format=self.response_format,
            bitrate=self.bitrate,
        )


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


UNAUTHORIZED: Final = ApiError(
    401,
    "a valid API key is required: send it as Authorization: Bearer KEY",
    type="authentication_error",
    code="invalid_api_key",
)
SHUTTING_DOWN: Final = ApiError(
    503, "the server is shutting down", type="server_error", code="shutting_down", retry_after=1
)
INTERNAL: Final = ApiError(
    500, "synthesis failed; see the server log", type="server_error", code="internal"
)
WRONG_CONTENT_TYPE: Final = ApiError(
    415,
    "the body must be JSON: send Content-Type: application/json",
    code="unsupported_media_type",
)
BODY_TIMEOUT: Final = ApiError(
    408, "the request body took too long to arrive", code="request_timeout"
)
TOO_LARGE: Final = ApiError(413, "the request body is too large", code="request_too_large")


def parse_speech(
    content_type: str,
    body: bytes,
    *,
    voices: frozenset[str],
    default_voice: str,
    max_text_length: int,
) -> SpeechRequest | ApiError:
    """The request in ``body``, or the first thing wrong with it.

    ``voices``: the server's voice names and aliases, lowercase; ``default_voice``: the one
    an omitted voice or an OpenAI stock name means.
    """
    if content_type != "application/json":
        return WRONG_CONTENT_TYPE
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return invalid(None, "the body is not valid JSON", code="invalid_json")
    if not isinstance(obj, dict):
        return invalid(None, "the body must be a JSON object", code="invalid_json")
    text = obj.get("input")
    if text is None:
        return invalid("input", "'input' is required", code="missing_required_parameter")
    if not isinstance(text, str) or not is_utf8(text):
        return invalid("input", "'input' must be a string")
    if not text.strip():
        return invalid("input", "'input' is empty")
    if len(text) > max_text_length:
        return invalid(
            "input",
            f"'input' has {len(text)} characters; the limit is {max_text_length}",
            code=protocol.ERR_TEXT_TOO_LONG,
        )
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        return invalid("model", "'model' must be a string")
    voice = _voice(obj.get("voice"), voices, default_voice)
    if isinstance(voice, ApiError):
        return voice
    response_format = obj.get("response_format", RESPONSE_FORMATS[0])
    if response_format not in RESPONSE_FORMATS:
        return invalid(
            "response_format",
            f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}",
            code=protocol.ERR_UNSUPPORTED,
        )
    speed = _speed(obj.get("speed"))
    if isinstance(speed, ApiError):
        return speed
    instructions = obj.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return invalid("instructions", "'instructions' must be a string")
    stream_format = obj.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        return invalid("stream_format", "'stream_format' must be audio or sse")
    sample_rate = _integer(obj, "sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    if isinstance(sample_rate, ApiError):
        return sample_rate
    bitrate = _integer(obj, "bitrate", MIN_BITRATE, MAX_BITRATE)
    if isinstance(bitrate, ApiError):
        return bitrate
    return SpeechRequest(
        input=text,
        voice=voice,
        response_format=response_format,
        stream_format=stream_format,
        sample_rate=DEFAULT_SAMPLE_RATE if sample_rate is None else sample_rate,
        bitrate=bitrate,
        speed=speed,
    )


def parse_stream_id(value: str | None) -> str | ApiError | None:
    """The reply a request belongs to (``X-Stream-Id``), if it says."""
    if value is None:
        return None
    if not 0 < len(value) <= protocol.MAX_REQUEST_ID_LENGTH or not value.isprintable():
        return invalid(
            http.STREAM_HEADER,
            f"{http.STREAM_HEADER} must be 1 to {protocol.MAX_REQUEST_ID_LENGTH} printable "
            "characters",
        )
    return value


def _voice(value: Any, voices: frozenset[str], default_voice: str) -> str | ApiError:
    if value is None:
        return default_voice
    if not isinstance(value, str) or not 0 < len(value) <= MAX_VOICE_LENGTH or not is_utf8(value):
        return invalid("voice", f"'voice' must be a string of 1 to {MAX_VOICE_LENGTH} characters")
    key = value.strip().lower()
    if key in voices:
        return key
    if key in OPENAI_VOICES:
        return default_voice
    return invalid(
        "voice",
        f"unknown voice {value[:64]!r}; available: {', '.join(sorted(voices))} "
        f"(OpenAI's voice names mean {default_voice!r})",
        code=protocol.ERR_UNKNOWN_VOICE,
    )


def _speed(value: Any) -> float | ApiError:
    if value is None:
        return 1.0
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not MIN_SPEED <= value <= MAX_SPEED
    ):
        return invalid("speed", f"'speed' must be a number from {MIN_SPEED} to {MAX_SPEED}")
    return float(value)


def _integer(obj: dict[str, Any], key: str, low: int, high: int) -> int | ApiError | None:
    value = obj.get(key)
    if value is None:
        return None
    if not is_int(value) or not low <= value <= high:
        return invalid(key, f"'{key}' must be an integer from {low} to {high}")
    return value


def refusal(code: str, message: str, *, retry_after: float = 1.0) -> ApiError:
    """Admission's refusal (``verdict.Refuse``'s code and message) as an HTTP error."""
    wait = max(1, math.ceil(retry_after))
    if code == protocol.ERR_BUSY:
        return ApiError(503, message, type="server_error", code=code, retry_after=wait)
    if code == protocol.ERR_SHUTTING_DOWN:
        return ApiError(503, message, type="server_error", code=code, retry_after=wait)
    if code == protocol.ERR_RATE_LIMITED:
        return ApiError(429, message, type="rate_limit_error", code=code, retry_after=wait)
    if code == protocol.ERR_TEXT_TOO_LONG:
        return invalid("input", message, code=code)
    if code == protocol.ERR_UNKNOWN_VOICE:
        return invalid("voice", message, code=code)
    if code in protocol.RETRYABLE_ERROR_CODES:
        return ApiError(503, message, type="server_error", code=code, retry_after=wait)
    return invalid(None, message, code=code)


def models(created: int) -> dict[str, Any]:
    """``GET /v1/models``: OpenAI's list shape."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": OWNER}
            for name in MODELS
        ],
    }


def voices_list(voices: list[dict[str, Any]], default_voice: str) -> dict[str, Any]:
    """``GET /v1/audio/voices``: the server's voices (``/v1/voices``'s entries) as a list
    object, with the default voice that OpenAI's stock names mean."""
    return {
        "object": "list",
        "default": default_voice,
        "openai_voices": sorted(OPENAI_VOICES),
        "data": [{"id": v["name"], "object": "voice", **v} for v in voices],
    }
