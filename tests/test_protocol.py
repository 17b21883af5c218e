"""The sans-I/O wire protocol: round trips, the legacy variants, and refusals."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import knowlithic_protocol as p

ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=p.MAX_REQUEST_ID_LENGTH)
texts = st.text(st.characters(codec="utf-8"), max_size=300)
rates = st.integers(p.MIN_SAMPLE_RATE, p.MAX_SAMPLE_RATE)


@given(
    ids,
    texts,
    st.sampled_from(["elise", "joe"]),
    rates,
    st.sampled_from(p.OUTPUT_FORMATS),
    st.booleans(),
    st.one_of(st.none(), ids),
    st.one_of(st.none(), st.integers(p.MIN_BITRATE, p.MAX_BITRATE)),
)
def test_text_to_speech_round_trips(
    request_id: str,
    text: str,
    voice: str,
    rate: int,
    fmt: p.OutputFormat,
    words: bool,
    stream_id: str | None,
    bitrate: int | None,
) -> None:
    msg = p.TextToSpeech(request_id, text, voice, rate, fmt, words, stream_id, bitrate)
    assert p.decode_client_message(p.encode_client_message(msg)) == msg


@given(ids)
def test_cancel_and_keepalive_round_trip(request_id: str) -> None:
    for msg in (p.Cancel(request_id), p.Keepalive()):
        assert p.decode_client_message(p.encode_client_message(msg)) == msg


@given(
    st.one_of(st.none(), ids),
    st.binary(max_size=2000),
    st.one_of(st.none(), rates),
    st.one_of(st.none(), st.integers(0, 10**6)),
    st.booleans(),
)
def test_audio_round_trips_in_both_dialects(
    request_id: str | None, data: bytes, rate: int | None, seq: int | None, binary: bool
) -> None:
    msg = p.Audio(request_id, data, rate, seq)
    frame = p.encode_server_message(msg, binary_audio=binary)
    assert isinstance(frame, bytes) is binary
    assert p.decode_server_message(frame, tagged_binary=True) == msg


def test_server_messages_round_trip() -> None:
    msgs: list[p.ServerMessage] = [
        p.Capabilities(1, ("joe", "elise"), ("pcm", "wav"), (16000, 24000), True, 5000, 16),
        p.WordTimestamps("r1", (p.WordTiming("Hello", 0.0, 0.25),), estimated=True),
        p.Complete("r1"),
        p.Complete("r1", cancelled=True),
        p.error(p.ERR_BUSY, "full", request_id="r1"),
        p.error(p.ERR_UNKNOWN_VOICE, "no such voice"),
    ]
    for msg in msgs:
        assert p.decode_server_message(p.encode_server_message(msg), tagged_binary=True) == msg


def test_retryable_follows_the_code_unless_stated() -> None:
    assert p.error(p.ERR_BUSY, "x").retryable
    assert not p.error(p.ERR_BAD_REQUEST, "x").retryable
    stated = json.dumps({"type": "error", "code": "weird", "message": "m", "retryable": True})
    decoded = p.decode_server_message(stated, tagged_binary=False)
    assert isinstance(decoded, p.Error) and decoded.retryable


@pytest.mark.parametrize("field", ["audio_data", "data", "audio"])
def test_legacy_base64_audio_fields(field: str) -> None:
    frame = json.dumps({"type": "audio", field: base64.b64encode(b"\x01\x02").decode()})
    assert p.decode_server_message(frame, tagged_binary=False) == p.Audio(None, b"\x01\x02")


@pytest.mark.parametrize("kind", ["complete", "done", "SYNTHESIS_COMPLETED", "Completed"])
def test_completion_names(kind: str) -> None:
    frame = json.dumps({"type": kind, "request_id": 7})
    assert p.decode_server_message(frame, tagged_binary=False) == p.Complete("7")


def test_untagged_binary_is_bare_audio() -> None:
    assert p.decode_server_message(b"\x00\x01\x02", tagged_binary=False) == p.Audio(
        None, b"\x00\x01\x02"
    )


def test_unknown_types_are_kept_as_other() -> None:
    decoded = p.decode_server_message('{"type":"ready","request_id":"r"}', tagged_binary=False)
    assert decoded == p.Other("ready", "r", {"type": "ready", "request_id": "r"})


def test_word_timing_aliases() -> None:
    frame = json.dumps(
        {"type": "word_timestamps", "words": [{"text": "Hi", "start_time": 0, "end_time": 0.2}]}
    )
    decoded = p.decode_server_message(frame, tagged_binary=False)
    assert isinstance(decoded, p.WordTimestamps)
    assert decoded.words == (p.WordTiming("Hi", 0.0, 0.2),)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1]",
        "{}",
        '{"type": ""}',
        '{"type": "audio", "audio_data": "@@"}',
        '{"type": "audio", "audio_data": 5}',
        '{"type": "audio", "request_id": ""}',
        '{"type": "audio", "request_id": {"a": 1}}',
        '{"type": "audio", "sample_rate": "fast"}',
        '{"type": "word_timestamps", "words": "nope"}',
        '{"type": "word_timestamps", "words": [{"word": "a"}]}',
        '{"type": "capabilities", "voices": "joe", "protocol_version": 1}',
        '{"type": "capabilities", "voices": []}',
        b"\x00",
        b"\x00\x10{}",
        b"\x00\x02[]",
        b"\x00\x02\xff\xfe",
    ],
)
def test_malformed_server_frames_raise_protocol_errors(frame: str | bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_server_message(frame, tagged_binary=True)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"binary", p.ERR_BAD_REQUEST),
        ("{", p.ERR_BAD_REQUEST),
        ('{"type": "sing", "request_id": "r"}', p.ERR_BAD_REQUEST),
        ('{"type": "cancel"}', p.ERR_BAD_REQUEST),
        ('{"type": "text_to_speech", "request_id": "r"}', p.ERR_BAD_REQUEST),
        (
            '{"type": "text_to_speech", "request_id": "r", "text": "a", "voice": "v"}',
            p.ERR_BAD_REQUEST,
        ),
        (
            '{"type": "text_to_speech", "request_id": "r", "text": "a", "voice": "v", '
            '"sample_rate": 16000, "output_format": "flac"}',
            p.ERR_UNSUPPORTED,
        ),
        (
            '{"type": "text_to_speech", "request_id": "r", "text": "a", "voice": "v", '
            '"sample_rate": true}',
            p.ERR_BAD_REQUEST,
        ),
        (
            '{"type": "text_to_speech", "request_id": "r", "text": "a", "voice": "v", '
            '"sample_rate": 16000, "word_timestamps": "yes"}',
            p.ERR_BAD_REQUEST,
        ),
        (
            '{"type": "text_to_speech", "request_id": "r", "text": "\\udc80", "voice": "v", '
            '"sample_rate": 16000}',
            p.ERR_BAD_REQUEST,
        ),
        (
            '{"type": "text_to_speech", "request_id": "r", "text": "a", "voice": "v", '
            '"sample_rate": 16000, "bitrate": 1000000}',
            p.ERR_BAD_REQUEST,
        ),
        ('{"type": "cancel", "request_id": "\\ud800"}', p.ERR_BAD_REQUEST),
        ('{"type": "cancel", "request_id": ' + "9" * 129 + "}", p.ERR_BAD_REQUEST),
        (
            '{"type": "text_to_speech", "request_id": "r", "text": "a", "voice": "'
            + "v" * 129
            + '", "sample_rate": 16000}',
            p.ERR_BAD_REQUEST,
        ),
        ('{"type": "keepalive", "n": ' + "9" * 5000 + "}", p.ERR_BAD_REQUEST),
        ("[" * 5000 + "]" * 5000, p.ERR_BAD_REQUEST),
    ],
)
def test_malformed_client_frames_name_their_code_and_request(frame: str | bytes, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_client_message(frame)
    assert info.value.code == code
    if isinstance(frame, str) and '"request_id": "r"' in frame:
        assert info.value.request_id == "r"


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_decoders_never_raise_anything_but_protocol_errors(frame: str | bytes) -> None:
    for decode in (
        p.decode_client_message,
        lambda f: p.decode_server_message(f, tagged_binary=True),
        lambda f: p.decode_server_message(f, tagged_binary=False),
    ):
        with contextlib.suppress(p.ProtocolError):
            decode(frame)
