"""Fuzzing the server with every kind of client message gone wrong, and with raw garbage.

Each frame must get an ``error`` (or, if it happens to be valid, the ordinary answer), the
server must log no error and leave no task exception behind, and the connection must stay
usable: a valid request on it completes afterwards, and a request on another connection,
in flight all along, is not disturbed.  One server per test; hypothesis draws batches of
frames, each batch on a fresh connection.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import knowlithic_protocol as protocol

from .helpers import Client, Connect, RunningServer, StartServer

FUZZ = settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one server for every example, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# Stand-ins for what json.dumps cannot write: replaced in the encoded frame.
HUGE_NUMBER = "\x00huge\x00"  # 5,000 digits: past Python's int-from-text limit of 4,300
DEEP_NESTING = "\x00deep\x00"  # arrays nested 5,000 deep: past the JSON parser's stack
_STAND_INS = {
    json.dumps(HUGE_NUMBER): "9" * 5000,
    json.dumps(DEEP_NESTING): "[" * 5000 + "]" * 5000,
}
VALID: dict[str, dict[str, Any]] = {
    "text_to_speech": {
        "type": "text_to_speech",
        "request_id": "fuzz",
        "text": "Hello there.",
        "voice": "joe",
        "sample_rate": 16000,
        "output_format": "pcm",
        "word_timestamps": True,
        "stream_id": "reply",
    },
    "text_to_speech_opus": {
        "type": "text_to_speech",
        "request_id": "fuzz-opus",
        "text": "Hello there.",
        "voice": "joe",
        "sample_rate": 22050,  # not an Opus rate: carried at 24 kHz
        "output_format": "opus",
        "bitrate": 24000,
    },
    "cancel": {"type": "cancel", "request_id": "fuzz"},
    "keepalive": {"type": "keepalive"},
}
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, -16000, 7999, 48001, 2**63, 10**30, 16000.0, 1e308, 5999, 64001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "x" * 12_000, "é" * 3000, "\ud800", "a\udfffb", "\x00", "\u202e"]),
    st.sampled_from(
        ["<speak>", "joe ", "ELISE", "amy", "wav ", "PCM", "mp3", "opus", "OPUS", "😀" * 50]
    ),
    st.sampled_from(["TEXT_TO_SPEECH", "text-to-speech", "Cancel", "synthesize", "audio"]),
    st.just(HUGE_NUMBER),
    st.just(DEEP_NESTING),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def encode(obj: Any) -> str:
    frame = json.dumps(obj, allow_nan=True)  # ASCII: lone surrogates travel as \u escapes
    for stand_in, raw in _STAND_INS.items():
        frame = frame.replace(stand_in, raw)
    return frame


@st.composite
def bad_messages(draw: st.DrawFn) -> str:
    """A client message of a real type with odd values, missing fields or extra ones."""
    message = dict(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["set", "set", "drop", "extra"]))
        if action == "extra":
            message[draw(st.text(max_size=12))] = draw(ODD_VALUES)
        elif action == "drop" and message:
            del message[draw(st.sampled_from(sorted(message)))]
        elif message:
            message[draw(st.sampled_from(sorted(message)))] = draw(ODD_VALUES)
    return encode(message)


GARBAGE = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.builds(
        lambda frame, cut: frame[:cut],
        st.sampled_from([encode(m) for m in VALID.values()]),
        st.integers(min_value=0, max_value=220),
    ),
    st.sampled_from(
        [
            "null",
            "[]",
            "42",
            '"text_to_speech"',
            "{}",
            '{"type": null}',
            '{"type": "keepalive"',
            "\ufeff{}",
            '{"a":' * 3000 + "1" + "}" * 3000,
            encode([DEEP_NESTING]),
            encode(HUGE_NUMBER),
            encode({"type": "cancel", "request_id": HUGE_NUMBER}),
        ]
    ),
)

Expected = Literal["error", "request", "silent"]


def _unicode(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def expectation(frame: str | bytes) -> tuple[Expected, str | None]:
    """What the server owes a frame: an error, a request's answer, or nothing."""
    try:
        msg = protocol.decode_client_message(frame)
    except (ValueError, RecursionError):  # ProtocolError, and what JSON itself may raise
        return "error", None
    if isinstance(msg, protocol.Keepalive):
        return "silent", None
    if not _unicode(msg.request_id):
        return "error", None
    if isinstance(msg, protocol.TextToSpeech):
        return "request", msg.request_id
    return "silent", None


class Fuzzer:
    """Sends frames one at a time and checks what each one got back."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.fences = itertools.count()

    async def exchange(self, frame: str | bytes) -> None:
        expected, rid = expectation(frame)
        await self.client.send_raw(frame)
        if expected == "request" and rid is not None:
            await self.client.send(protocol.Cancel(rid))  # valid after all: keep it short
        # A request with nothing to say completes at once: everything before its answer is
        # the server's answer to the frame.
        fence = f"fence-{next(self.fences)}"
        await self.client.send(protocol.TextToSpeech(fence, "", "joe", 16000, "pcm"))
        answers: list[protocol.ServerMessage] = []
        fenced, ended = False, expected != "request"
        while not (fenced and ended):
            msg = await self.client.receive(timeout=10)
            if getattr(msg, "request_id", None) == fence:
                assert msg == protocol.Complete(fence)
                fenced = True
                continue
            answers.append(msg)
            ended |= isinstance(msg, protocol.Complete | protocol.Error)
        self.check(frame, expected, rid, answers)

    @staticmethod
    def check(
        frame: str | bytes,
        expected: Expected,
        rid: str | None,
        answers: list[protocol.ServerMessage],
    ) -> None:
        shown = repr(frame[:200])
        if expected == "silent":
            assert answers == [], shown
            return
        terminals = [m for m in answers if isinstance(m, protocol.Complete | protocol.Error)]
        assert len(terminals) == 1, (shown, answers)
        if expected == "error":
            assert answers == terminals and isinstance(terminals[0], protocol.Error), shown
            assert terminals[0].code in {protocol.ERR_BAD_REQUEST, protocol.ERR_UNSUPPORTED}
            return
        # a request: refused (unknown voice, too long...) or served until our cancel
        assert all(getattr(m, "request_id", None) == rid for m in answers), (shown, answers)
        assert all(isinstance(m, protocol.Audio | protocol.WordTimestamps) for m in answers[:-1]), (
            shown
        )


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # a task whose exception nobody read is reported when it is collected
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def fuzz_batch(
    frames: list[str] | list[str | bytes],
    server: RunningServer,
    bystander: Client,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a request in flight on another connection all along
    long_reply = "This reply keeps going while another connection sends garbage. " * 2
    bystander_id = f"bystander-{len(bystander.results)}"
    await bystander.request(long_reply, request_id=bystander_id)
    client = await connect(target=server)
    fuzzer = Fuzzer(client)
    for frame in frames:
        await fuzzer.exchange(frame)
    after = await client.run("Still listening.", request_id="after-the-fuzz")
    assert after.completed and len(after.data) > 16000
    await bystander.until_done(bystander_id)
    assert bystander.results[bystander_id].completed
    await client.ws.close()
    assert server_errors(caplog) == []


@pytest.fixture
async def fuzz_target(start_server: StartServer, connect: Connect) -> tuple[RunningServer, Client]:
    server = await start_server(rate_limit=0)  # thousands of frames from one address
    return server, await connect(target=server)


@FUZZ
@given(frames=st.lists(bad_messages(), min_size=5, max_size=15))
async def test_odd_client_messages_get_errors_and_harm_nothing(
    frames: list[str],
    fuzz_target: tuple[RunningServer, Client],
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    await fuzz_batch(frames, *fuzz_target, connect, caplog)


@FUZZ
@given(frames=st.lists(GARBAGE, min_size=5, max_size=15))
async def test_garbage_frames_get_errors_and_harm_nothing(
    frames: list[str | bytes],
    fuzz_target: tuple[RunningServer, Client],
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    await fuzz_batch(frames, *fuzz_target, connect, caplog)
