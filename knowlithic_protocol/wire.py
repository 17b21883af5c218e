"""Messages to WebSocket frames and back, sans-I/O.

Pure functions: nothing here touches a socket, a clock or an event loop.

Two dialects share one decoder:

* ``knowlithic.v1``: negotiated as the WebSocket subprotocol.  The server's first message is
  :class:`Capabilities`, and audio travels in binary frames tagged with their request id
  (a big-endian ``uint16`` header length, a JSON header, then the payload).
* legacy: what the seeds' servers send.  Audio is base64 in JSON (``audio_data`` or ``data``)
  or untagged binary frames; completion is ``complete``, ``done`` or ``SYNTHESIS_COMPLETED``.
  Messages without a request id decode with ``request_id=None``; :mod:`.client` attributes them.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

from .formats import OUTPUT_FORMATS
from .limits import (
    MAX_BITRATE,
    MAX_REQUEST_ID_LENGTH,
    MAX_SAMPLE_RATE,
    MAX_VOICE_LENGTH,
    MIN_BITRATE,
    MIN_SAMPLE_RATE,
)
from .messages import (
    ERR_UNSUPPORTED,
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

_COMPLETE_TYPES: Final = frozenset({"complete", "completed", "done", "synthesis_completed"})
_AUDIO_TYPES: Final = frozenset({"audio", "audio_chunk"})
_AUDIO_FIELDS: Final = ("audio_data", "data", "audio")
_BINARY_HEADER: Final = struct.Struct(">H")


def encode_client_message(msg: ClientMessage) -> str:
    """Encode a client message as the text of one WebSocket frame."""
    if isinstance(msg, TextToSpeech):
        payload: dict[str, Any] = {
            "type": "text_to_speech",
            "request_id": msg.request_id,
            "text": msg.text,
            "voice": msg.voice,
            "sample_rate": msg.sample_rate,
            "output_format": msg.output_format,
        }
        if msg.word_timestamps:
            payload["word_timestamps"] = True
        if msg.stream_id is not None:
            payload["stream_id"] = msg.stream_id
        if msg.bitrate is not None:
            payload["bitrate"] = msg.bitrate
    elif isinstance(msg, Cancel):
        payload = {"type": "cancel", "request_id": msg.request_id}
    else:
        payload = {"type": "keepalive"}
    return _dumps(payload)


def encode_server_message(msg: ServerMessage, *, binary_audio: bool = True) -> str | bytes:
    """Encode a server message as one WebSocket frame.

    Audio becomes a tagged binary frame when ``binary_audio`` (the ``knowlithic.v1`` dialect),
    otherwise base64 JSON under ``audio_data`` (what legacy clients read).
    """
    if isinstance(msg, Audio):
        header: dict[str, Any] = {"type": "audio", "request_id": msg.request_id}
        if msg.sample_rate is not None:
            header["sample_rate"] = msg.sample_rate
        if msg.sequence is not None:
            header["sequence"] = msg.sequence
        if binary_audio:
            raw = _dumps(header).encode()
            return _BINARY_HEADER.pack(len(raw)) + raw + msg.data
        header["audio_data"] = base64.b64encode(msg.data).decode("ascii")
        return _dumps(header)
    if isinstance(msg, Capabilities):
        return _dumps(
            {
                "type": "capabilities",
                "protocol_version": msg.protocol_version,
                "voices": list(msg.voices),
                "output_formats": list(msg.output_formats),
                "sample_rates": list(msg.sample_rates),
                "word_timestamps": msg.word_timestamps,
                "max_text_length": msg.max_text_length,
                "max_requests_in_flight": msg.max_requests_in_flight,
            }
        )
    if isinstance(msg, WordTimestamps):
        return _dumps(
            {
                "type": "word_timestamps",
                "request_id": msg.request_id,
                "estimated": msg.estimated,
                "words": [
                    {"word": w.word, "start": round(w.start, 4), "end": round(w.end, 4)}
                    for w in msg.words
                ],
            }
        )
    if isinstance(msg, Complete):
        payload: dict[str, Any] = {"type": "complete", "request_id": msg.request_id}
        if msg.cancelled:
            payload["cancelled"] = True
        return _dumps(payload)
    if isinstance(msg, Error):
        return _dumps(
            {
                "type": "error",
                "request_id": msg.request_id,
                "code": msg.code,
                "message": msg.message,
                "retryable": msg.retryable,
            }
        )
    return _dumps({**msg.fields, "type": msg.type, "request_id": msg.request_id})


# ---------------------------------------------------------------------------------------------
# decoding


def decode_client_message(frame: str | bytes) -> ClientMessage:
    """Decode and validate one frame a client sent.  Raises :class:`ProtocolError`."""
    if isinstance(frame, bytes):
        raise ProtocolError("binary frames are not accepted from clients; send JSON text")
    obj = _loads(frame)
    kind = _message_type(obj)
    if kind == "keepalive":
        return Keepalive()
    request_id = _required_request_id(obj)
    if kind == "cancel":
        return Cancel(request_id=request_id)
    if kind != "text_to_speech":
        raise ProtocolError(f"unknown message type {kind!r}", request_id=request_id)

    text = obj.get("text")
    if not isinstance(text, str) or not is_utf8(text):
        raise ProtocolError("'text' must be a string of valid Unicode", request_id=request_id)
    voice = obj.get("voice")
    if not isinstance(voice, str) or not 0 < len(voice) <= MAX_VOICE_LENGTH or not is_utf8(voice):
        raise ProtocolError(
            f"'voice' must be a string of 1 to {MAX_VOICE_LENGTH} characters",
            request_id=request_id,
        )
    sample_rate = obj.get("sample_rate")
    if (
        not isinstance(sample_rate, int)
        or isinstance(sample_rate, bool)
        or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE
    ):
        raise ProtocolError(
            f"'sample_rate' must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}",
            request_id=request_id,
        )
    output_format = obj.get("output_format", "wav")
    if output_format not in OUTPUT_FORMATS:
        raise ProtocolError(
            f"'output_format' must be one of {', '.join(OUTPUT_FORMATS)}",
            code=ERR_UNSUPPORTED,
            request_id=request_id,
        )
    word_timestamps = obj.get("word_timestamps", False)
    if not isinstance(word_timestamps, bool):
        raise ProtocolError("'word_timestamps' must be a boolean", request_id=request_id)
    stream_id = obj.get("stream_id")
    if stream_id is not None and (
        not isinstance(stream_id, str)
        or not 0 < len(stream_id) <= MAX_REQUEST_ID_LENGTH
        or not is_utf8(stream_id)
    ):
        raise ProtocolError(
            f"'stream_id' must be a string of 1 to {MAX_REQUEST_ID_LENGTH} characters",
            request_id=request_id,
        )
    return TextToSpeech(
        request_id=request_id,
        text=text,
        voice=voice,
        sample_rate=sample_rate,
        output_format=output_format,
        word_timestamps=word_timestamps,
        stream_id=stream_id,
        bitrate=_bitrate(obj, request_id),
    )


def _bitrate(obj: Mapping[str, Any], request_id: str) -> int | None:
    bitrate = _optional_int(obj, "bitrate", request_id)
    if bitrate is not None and not MIN_BITRATE <= bitrate <= MAX_BITRATE:
        raise ProtocolError(
            f"'bitrate' must be from {MIN_BITRATE} to {MAX_BITRATE} bit/s",
            request_id=request_id,
        )
    return bitrate


def decode_server_message(frame: str | bytes, *, tagged_binary: bool) -> ServerMessage:
    """Decode one frame a server sent.  Raises :class:`ProtocolError`.

    ``tagged_binary`` says binary frames carry the ``knowlithic.v1`` header; otherwise a
    binary frame is bare audio with no request id.
    """
    if isinstance(frame, bytes):
        if not tagged_binary:
            return Audio(request_id=None, data=frame)
        return _decode_tagged_audio(frame)

    obj = _loads(frame)
    kind = _message_type(obj)
    request_id = _optional_request_id(obj)

    if kind in _AUDIO_TYPES:
        return Audio(
            request_id=request_id,
            data=_audio_field(obj, request_id),
            sample_rate=_optional_int(obj, "sample_rate", request_id),
            sequence=_optional_int(obj, "sequence", request_id),
        )
    if kind in _COMPLETE_TYPES:
        return Complete(request_id=request_id, cancelled=obj.get("cancelled") is True)
    if kind == "cancelled":
        return Complete(request_id=request_id, cancelled=True)
    if kind == "word_timestamps":
        return WordTimestamps(
            request_id=request_id,
            words=_word_timings(obj.get("words"), request_id),
            estimated=obj.get("estimated") is True,
        )
    if kind == "error":
        code = str(obj.get("code") or "error")
        retryable = obj.get("retryable")
        return error(
            code,
            str(obj.get("message") or obj.get("error") or code),
            request_id=request_id,
            retryable=retryable if isinstance(retryable, bool) else None,
        )
    if kind == "capabilities":
        return _capabilities(obj)
    return Other(type=kind, request_id=request_id, fields=obj)


def _decode_tagged_audio(frame: bytes) -> Audio:
    if len(frame) < _BINARY_HEADER.size:
        raise ProtocolError("binary frame shorter than its header length field")
    (header_len,) = _BINARY_HEADER.unpack_from(frame)
    end = _BINARY_HEADER.size + header_len
    if len(frame) < end:
        raise ProtocolError("binary frame shorter than its declared header")
    try:
        header = json.loads(frame[_BINARY_HEADER.size : end])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"binary frame header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError("binary frame header must be a JSON object")
    request_id = _optional_request_id(header)
    return Audio(
        request_id=request_id,
        data=frame[end:],
        sample_rate=_optional_int(header, "sample_rate", request_id),
        sequence=_optional_int(header, "sequence", request_id),
    )


def _capabilities(obj: Mapping[str, Any]) -> Capabilities:
    def str_list(key: str) -> tuple[str, ...]:
        value = obj.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError(f"capabilities '{key}' must be a list of strings")
        return tuple(value)

    rates = obj.get("sample_rates") or []
    if not isinstance(rates, list) or not all(is_int(r) for r in rates):
        raise ProtocolError("capabilities 'sample_rates' must be a list of integers")
    version = _optional_int(obj, "protocol_version", None)
    if version is None:
        raise ProtocolError("capabilities 'protocol_version' must be an integer")
    return Capabilities(
        protocol_version=version,
        voices=str_list("voices"),
        output_formats=str_list("output_formats"),
        sample_rates=tuple(rates),
        word_timestamps=obj.get("word_timestamps") is True,
        max_text_length=_optional_int(obj, "max_text_length", None),
        max_requests_in_flight=_optional_int(obj, "max_requests_in_flight", None),
    )


def _word_timings(value: Any, request_id: str | None) -> tuple[WordTiming, ...]:
    if not isinstance(value, list):
        raise ProtocolError("'words' must be a list", request_id=request_id)
    words = []
    for item in value:
        if not isinstance(item, dict):
            raise ProtocolError("each word timing must be an object", request_id=request_id)
        word = item.get("word", item.get("text"))
        start = item.get("start", item.get("start_time"))
        end = item.get("end", item.get("end_time"))
        if (
            not isinstance(word, str)
            or not isinstance(start, int | float)
            or not isinstance(end, int | float)
        ):
            raise ProtocolError(
                "a word timing needs 'word' (string), 'start' and 'end' (seconds)",
                request_id=request_id,
            )
        words.append(WordTiming(word=word, start=float(start), end=float(end)))
    return tuple(words)


def _audio_field(obj: Mapping[str, Any], request_id: str | None) -> bytes:
    for key in _AUDIO_FIELDS:
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ProtocolError(f"'{key}' must be a base64 string", request_id=request_id)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(f"'{key}' is not valid base64", request_id=request_id) from None
    return b""


def _loads(frame: str) -> dict[str, Any]:
    try:
        obj = json.loads(frame)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"frame is not valid JSON: {e.msg}") from None
    except (ValueError, RecursionError):
        # a number of thousands of digits, or arrays nested thousands deep
        raise ProtocolError("frame is JSON this protocol cannot hold") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame must be a JSON object")
    return obj


def _message_type(obj: Mapping[str, Any]) -> str:
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise ProtocolError("message has no 'type'", request_id=_optional_request_id(obj, True))
    return kind.strip().lower().replace("-", "_")


def _optional_request_id(obj: Mapping[str, Any], lenient: bool = False) -> str | None:
    value = obj.get("request_id")
    if value is None:
        return None
    if is_int(value):
        # the seed's client numbered its requests; servers echo them back as numbers
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID_LENGTH and is_utf8(value):
        return value
    if lenient:
        return None
    raise ProtocolError(
        f"'request_id' must be a string (or a number) of 1 to {MAX_REQUEST_ID_LENGTH} characters"
    )


def _required_request_id(obj: Mapping[str, Any]) -> str:
    request_id = _optional_request_id(obj)
    if request_id is None:
        raise ProtocolError("'request_id' is required")
    return request_id


def _optional_int(obj: Mapping[str, Any], key: str, request_id: str | None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not is_int(value):
        raise ProtocolError(f"'{key}' must be an integer", request_id=request_id)
    return int(value)


def is_utf8(value: str) -> bool:
    """False for strings JSON can carry but UTF-8 cannot: lone surrogates ("\\udc80")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_int(value: Any) -> TypeGuard[int]:
    """An integer in JSON's sense: ``true`` is a bool, though Python counts it an int."""
    return isinstance(value, int) and not isinstance(value, bool)


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
