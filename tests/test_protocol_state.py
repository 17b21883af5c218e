"""The per-request rules of both sides, sans-I/O: frames in, events out, no socket."""

from __future__ import annotations

import json

import pytest

import knowlithic_protocol as protocol
from knowlithic_protocol.client import ClientProtocol, ConnectionMessage, Ignored, RequestMessage
from knowlithic_protocol.messages import LocalProtocolError
from knowlithic_protocol.server import Invalid, ServerProtocol


def server_frame(msg: protocol.ServerMessage, *, tagged: bool = True) -> str | bytes:
    return protocol.encode_server_message(msg, binary_audio=tagged)


def legacy(payload: dict[str, object]) -> str:
    return json.dumps(payload)


def tts(request_id: str) -> protocol.TextToSpeech:
    return protocol.TextToSpeech(request_id=request_id, text="Hi.", voice="joe", sample_rate=16000)


# -- client --------------------------------------------------------------------------------------


def test_a_tagged_request_takes_its_messages_until_its_terminal_one() -> None:
    client = ClientProtocol(tagged=True)
    client.open_request("a")
    audio = client.receive(server_frame(protocol.Audio("a", b"\x00\x01")))
    assert audio == RequestMessage("a", protocol.Audio("a", b"\x00\x01"), final=False)
    done = client.receive(server_frame(protocol.Complete("a")))
    assert isinstance(done, RequestMessage) and done.final
    assert not client.is_open("a")
    late = client.receive(server_frame(protocol.Audio("a", b"\x00\x01")))
    assert late == Ignored("request not open", "Audio", "a")


def test_a_cancelled_request_s_late_audio_is_ignored() -> None:
    client = ClientProtocol(tagged=True)
    client.open_request("a")
    client.send(protocol.Cancel("a"))
    assert client.open_requests == ()
    assert isinstance(client.receive(server_frame(protocol.Audio("a", b"\x00\x00"))), Ignored)


def test_an_error_naming_no_request_is_about_the_connection_on_a_tagged_socket() -> None:
    client = ClientProtocol(tagged=True)
    client.open_request("a")
    event = client.receive(server_frame(protocol.error(protocol.ERR_INTERNAL, "oops")))
    assert isinstance(event, ConnectionMessage)
    assert client.is_open("a")
    untagged_audio = client.receive(legacy({"type": "audio", "audio_data": "AAA="}))
    assert isinstance(untagged_audio, Ignored) and not client.untagged_peer


def test_untagged_messages_go_to_the_oldest_open_request_then_the_next() -> None:
    client = ClientProtocol(tagged=False)
    client.open_request("first")
    client.open_request("second")
    assert client.receive(b"\x01\x00") == RequestMessage(
        "first", protocol.Audio(None, b"\x01\x00"), final=False
    )
    assert client.untagged_peer
    done = client.receive(legacy({"type": "done"}))
    assert isinstance(done, RequestMessage) and done.request_id == "first" and done.final
    after = client.receive(b"\x02\x00")
    assert isinstance(after, RequestMessage) and after.request_id == "second"


def test_the_request_a_legacy_server_last_named_takes_its_untagged_audio() -> None:
    client = ClientProtocol(tagged=False)
    client.open_request("1")
    client.open_request("2")
    started = client.receive(legacy({"type": "audio_start", "request_id": 2}))
    assert isinstance(started, Ignored) and started.reason == "unknown type"
    event = client.receive(b"\x00\x00")
    assert isinstance(event, RequestMessage) and event.request_id == "2"


def test_untagged_messages_with_nothing_open_are_ignored_unless_they_are_errors() -> None:
    client = ClientProtocol(tagged=False)
    assert isinstance(client.receive(b"\x00\x00"), Ignored)
    event = client.receive(legacy({"type": "error", "message": "no"}))
    assert isinstance(event, ConnectionMessage)


def test_malformed_frames_are_ignored_with_a_reason_and_capabilities_are_kept() -> None:
    client = ClientProtocol(tagged=True)
    bad = client.receive("{not json")
    assert isinstance(bad, Ignored) and bad.reason == "malformed"
    caps = protocol.Capabilities(1, ("joe",), ("pcm",), (16000,))
    assert client.receive(server_frame(caps)) == ConnectionMessage(caps)
    assert client.capabilities == caps


def test_the_client_cannot_send_a_request_it_did_not_open_or_open_one_twice() -> None:
    client = ClientProtocol(tagged=True)
    with pytest.raises(LocalProtocolError):
        client.send(tts("a"))
    client.open_request("a")
    assert json.loads(client.send(tts("a")))["request_id"] == "a"
    with pytest.raises(LocalProtocolError):
        client.open_request("a")


# -- server --------------------------------------------------------------------------------------


def test_every_request_ends_exactly_once() -> None:
    server = ServerProtocol(binary_audio=True)
    server.start("a")
    assert isinstance(server.send(protocol.Audio("a", b"\x00\x00")), bytes)
    server.send(protocol.Complete("a"))
    assert not server.is_in_flight("a")
    with pytest.raises(LocalProtocolError):
        server.send(protocol.Complete("a"))
    with pytest.raises(LocalProtocolError):
        server.send(protocol.Audio("a", b"\x00\x00"))


def test_a_refusal_naming_a_request_in_flight_leaves_it_running() -> None:
    server = ServerProtocol(binary_audio=False)
    server.start("a")
    frame = server.refuse(protocol.error(protocol.ERR_DUPLICATE_REQUEST, "dup", request_id="a"))
    assert json.loads(frame)["code"] == protocol.ERR_DUPLICATE_REQUEST
    assert server.is_in_flight("a")
    with pytest.raises(LocalProtocolError):
        server.start("a")
    audio = server.send(protocol.Audio("a", b"\x00\x00"))
    assert json.loads(audio)["audio_data"] == "AAA="  # legacy clients read base64 JSON


def test_an_abandoned_request_frees_its_id_and_connection_errors_need_no_request() -> None:
    server = ServerProtocol(binary_audio=True)
    server.start("a")
    server.abandon("a")
    server.start("a")
    assert server.in_flight == 1
    server.send(protocol.error(protocol.ERR_INTERNAL, "the server failed on this message"))
    assert server.in_flight == 1


def test_the_server_reads_requests_and_names_what_is_wrong_with_the_rest() -> None:
    server = ServerProtocol(binary_audio=True)
    assert server.receive(protocol.encode_client_message(tts("a"))) == tts("a")
    bad = server.receive(json.dumps({"type": "text_to_speech", "request_id": "b"}))
    assert isinstance(bad, Invalid) and bad.error.request_id == "b"
    assert isinstance(server.receive(b"\x00"), Invalid)
