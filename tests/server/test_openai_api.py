"""OpenAI's speech API as the server reads it (tts_server/openai_api.py): every body rule and
every error's shape, as pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest

import knowlithic_protocol as protocol
from tts_server import openai_api
from tts_server.openai_api import ApiError, SpeechRequest, parse_speech

VOICES = frozenset({"joe", "elise", "nova"})  # "nova" is a voice of this server, not OpenAI's


def parse(body: Any, content_type: str = "application/json") -> SpeechRequest | ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_speech(content_type, raw, voices=VOICES, default_voice="joe", max_text_length=50)


def test_a_bare_input_gets_openai_s_defaults_mp3_at_24_khz_in_the_default_voice() -> None:
    parsed = parse({"input": "Hello there."})
    assert parsed == SpeechRequest(
        input="Hello there.",
        voice="joe",
        response_format="mp3",
        stream_format="audio",
        sample_rate=24000,
        bitrate=None,
    )
    msg = parsed.message("r1")
    assert (msg.request_id, msg.text, msg.voice, msg.output_format) == (
        "r1",
        "Hello there.",
        "joe",
        "mp3",
    )
    assert msg.stream_id is None


def test_openai_s_fields_are_taken_and_model_and_instructions_ignored() -> None:
    parsed = parse(
        {
            "model": "gpt-4o-mini-tts",
            "input": "Hi.",
            "voice": "Elise",
            "response_format": "opus",
            "speed": 1.0,
            "instructions": "Speak cheerfully.",
            "stream_format": "sse",
            "sample_rate": 16000,
            "bitrate": 12000,
        }
    )
    assert parsed == SpeechRequest("Hi.", "elise", "opus", "sse", 16000, 12000)


@pytest.mark.parametrize("name", ["alloy", "ash", "Coral", "shimmer"])
def test_openai_s_stock_voices_mean_the_default_voice(name: str) -> None:
    parsed = parse({"input": "Hi.", "voice": name})
    assert isinstance(parsed, SpeechRequest)
    assert parsed.voice == "joe"


def test_a_stock_name_the_server_has_is_the_server_s_voice() -> None:
    parsed = parse({"input": "Hi.", "voice": "nova"})
    assert isinstance(parsed, SpeechRequest)
    assert parsed.voice == "nova"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"\xff\xfe", None, "invalid_json"),
        ([1, 2], None, "invalid_json"),
        ({"voice": "joe"}, "input", "missing_required_parameter"),
        ({"input": ""}, "input", "invalid_value"),
        ({"input": "   \n"}, "input", "invalid_value"),
        ({"input": 5}, "input", "invalid_value"),
        ({"input": "x" * 51}, "input", protocol.ERR_TEXT_TOO_LONG),
        ({"input": "Hi.", "voice": "nobody"}, "voice", protocol.ERR_UNKNOWN_VOICE),
        ({"input": "Hi.", "voice": ""}, "voice", "invalid_value"),
        ({"input": "Hi.", "voice": 3}, "voice", "invalid_value"),
        ({"input": "Hi.", "response_format": "flac"}, "response_format", "unsupported"),
        ({"input": "Hi.", "response_format": "aac"}, "response_format", "unsupported"),
        ({"input": "Hi.", "speed": 5}, "speed", "invalid_value"),
        ({"input": "Hi.", "speed": "fast"}, "speed", "invalid_value"),
        ({"input": "Hi.", "speed": 1.5}, "speed", "unsupported"),
        ({"input": "Hi.", "model": 1}, "model", "invalid_value"),
        ({"input": "Hi.", "instructions": 1}, "instructions", "invalid_value"),
        ({"input": "Hi.", "stream_format": "chunks"}, "stream_format", "invalid_value"),
        ({"input": "Hi.", "sample_rate": 4000}, "sample_rate", "invalid_value"),
        ({"input": "Hi.", "sample_rate": "24000"}, "sample_rate", "invalid_value"),
        ({"input": "Hi.", "bitrate": 1_000_000}, "bitrate", "invalid_value"),
    ],
)
def test_each_bad_body_is_a_400_naming_the_field(body: Any, param: str | None, code: str) -> None:
    error = parse(body)
    assert isinstance(error, ApiError)
    assert (error.status, error.param, error.code) == (400, param, code)
    assert error.body() == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


def test_an_unknown_format_lists_the_formats_and_an_unknown_voice_the_voices() -> None:
    error = parse({"input": "Hi.", "response_format": "flac"})
    assert isinstance(error, ApiError)
    assert "mp3, opus, wav, pcm" in error.message
    error = parse({"input": "Hi.", "voice": "nobody"})
    assert isinstance(error, ApiError)
    assert "elise, joe, nova" in error.message


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_body_that_is_not_declared_json_is_415(content_type: str) -> None:
    error = parse({"input": "Hi."}, content_type=content_type)
    assert error == openai_api.WRONG_CONTENT_TYPE
    assert error.status == 415


@pytest.mark.parametrize(
    ("code", "status", "kind", "param"),
    [
        (protocol.ERR_BUSY, 503, "server_error", None),
        (protocol.ERR_SHUTTING_DOWN, 503, "server_error", None),
        (protocol.ERR_RATE_LIMITED, 429, "rate_limit_error", None),
        (protocol.ERR_TEXT_TOO_LONG, 400, "invalid_request_error", "input"),
        (protocol.ERR_UNKNOWN_VOICE, 400, "invalid_request_error", "voice"),
    ],
)
def test_admission_s_refusals_map_to_http(
    code: str, status: int, kind: str, param: str | None
) -> None:
    error = openai_api.refusal(code, "why", retry_after=0.3)
    assert (error.status, error.type, error.param, error.code) == (status, kind, param, code)
    if status in (429, 503):
        assert error.retry_after == 1  # whole seconds, at least one


def test_models_is_openai_s_list_shape() -> None:
    listed = openai_api.models(1)
    assert listed["object"] == "list"
    assert {m["id"] for m in listed["data"]} >= {"tts-1", "gpt-4o-mini-tts"}
    assert all(m["object"] == "model" and m["owned_by"] for m in listed["data"])
