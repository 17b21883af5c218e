"""Deepgram's socket fails mid-call: the worker's STT hears the caller again.

Real sockets and processes: the plugin streams to tests/fake_deepgram.py (a process of its
own, pocketsphinx transcripts), which drops every socket (TCP close, no close frame) or is
killed with SIGKILL and started again 1.5 s later on the same port.  The caller is Piper's
speech at real-time pace.  Deaf-time figures: bench/stt_drop.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from livekit.agents import (
    APIConnectOptions,
    ConversationItemAddedEvent,
    TurnHandlingOptions,
    stt,
)
from livekit.agents.voice.events import ErrorEvent
from livekit.plugins import silero

import agent
from bench.call.audio_io import CallerAudioInput, Timeline
from tests import deepgram_drop as dd
from tests.audio_capture import CapturingAudioOutput
from tests.fake_deepgram import FakeDeepgramProcess
from tests.fake_knowlithic import FakeKnowlithicServer
from tests.plugin_helpers import eventually
from tests.scripted_llm import ScriptedLLM
from tests.worker_settings import settings as make_settings
from worker.stt_recovery import stt_connect_options
from worker.stt_watchdog import HANG_AFTER_S, MAX_HANG_AFTER_S, WatchedSTT

pytestmark = pytest.mark.timeout(240)
SLACK = int(0.1 * dd.RATE)  # audio the client had pushed but not yet sent at the fault
LOST_AT_MOST = int(0.25 * dd.RATE)  # what a dead socket may swallow before the client sees it


@pytest.fixture(scope="module")
def speech() -> dict[str, dd.Pcm]:
    return dd.render(dd.PHRASES)


@pytest.fixture
async def deepgram_server() -> AsyncIterator[FakeDeepgramProcess]:
    server = FakeDeepgramProcess()
    await server.start()
    yield server
    await server.stop()


def check_recovered(result: dd.Run, speech: dict[str, dd.Pcm]) -> None:
    plan = dd.script(speech)
    assert result.error is None, result.error
    finals = result.finals()
    # A went through the first socket; B (the fault in its middle) and C, said after the
    # fault, through the new one: the words of B said before the fault too, replayed
    for phrase in dd.PHRASES:
        assert any(dd.hears(f, phrase, least=3) for f in finals), (phrase, finals)
    # and nothing twice: the new socket was sent only what the old one had not finalized
    assert not result.repeated_words(), (result.repeated_words(), finals)
    # The new socket got the audio from after A's final on (the old socket's unfinalized
    # audio, replayed) and nothing after the fault missing: it starts before the fault, or
    # within a frame or two after it
    resumed = dd.resumed_from(result)
    assert plan.starts[dd.A] < resumed <= plan.fault_at + LOST_AT_MOST, (
        resumed - plan.fault_at
    ) / dd.RATE
    assert result.replayed > 0


async def test_a_drop_mid_utterance_loses_no_words(
    deepgram_server: FakeDeepgramProcess, speech: dict[str, dd.Pcm]
) -> None:
    result = await dd.run(deepgram_server, speech, "drop", stt_connect_options())
    check_recovered(result, speech)
    first, second = result.connections
    assert first["closed_by"] == "drop"
    # between them the two sockets got all the audio (the unfinalized part twice) but what
    # the dead one swallowed
    received = (int(str(first["audio_bytes"])) + int(str(second["audio_bytes"]))) // 2
    received -= round(result.replayed * dd.RATE)
    assert result.pushed - LOST_AT_MOST <= received <= result.pushed
    assert result.hangs == []
    assert second["close_stream"]  # the stream ended normally on the new socket


async def test_a_killed_server_is_heard_again_once_it_restarts(
    deepgram_server: FakeDeepgramProcess, speech: dict[str, dd.Pcm]
) -> None:
    result = await dd.run(deepgram_server, speech, "kill", stt_connect_options())
    assert result.listening_again - result.fault_time >= dd.DOWN_S
    check_recovered(result, speech)
    [after_restart] = result.connections  # the new process knows only the new socket
    first_audio = float(str(after_restart["first_audio_at"]))
    # it reconnected within one retry interval (and some scheduling) of the server listening
    assert first_audio - result.listening_again < 0.5 + 1.0


async def test_a_hung_socket_is_replaced_and_what_it_swallowed_is_replayed(
    deepgram_server: FakeDeepgramProcess, speech: dict[str, dd.Pcm]
) -> None:
    """A socket that hangs mid-utterance (TCP open, no answers, no pongs; new sockets are
    served) is given up by the worker's watchdog once the caller's voice goes unanswered, and
    the new socket is sent first what the hung one never finalized: the rest of B and C,
    said into the hung socket, are heard, A (finalized before the hang) is not heard twice.

    The call ends 2 s after C: aiohttp's heartbeat (45 s) would come far too late, and a
    stream whose input has ended never reconnects."""
    result = await dd.run(deepgram_server, speech, "stall", stt_connect_options())
    check_recovered(result, speech)
    assert result.hangs == [HANG_AFTER_S]
    hung, new = result.connections
    assert hung["closed_at"] is None  # the hung server never noticed: the client gave it up
    assert float(str(new["opened_at"])) > result.fault_time
    assert new["close_stream"]  # the stream ended normally on the new socket


async def test_when_every_socket_hangs_the_watchdog_waits_longer_each_time(
    deepgram_server: FakeDeepgramProcess, speech: dict[str, dd.Pcm]
) -> None:
    """Deepgram hung everywhere (new sockets open, then never answer): each new socket is
    given twice the previous one's wait, so the reconnects thin out instead of storming, and
    the stream never gives up."""
    result = await dd.run(deepgram_server, speech, "stall_all", stt_connect_options(), tail=14.0)
    assert result.error is None, result.error
    assert len(result.hangs) >= 2, result.hangs
    assert result.hangs == [
        min(HANG_AFTER_S * 2**i, MAX_HANG_AFTER_S) for i in range(len(result.hangs))
    ]
    # each hung socket was replaced, but one given up after the call's input had ended
    assert len(result.hangs) <= len(result.connections) <= len(result.hangs) + 1
    assert all(c["closed_at"] is None for c in result.connections)  # every one hung


async def test_a_caller_silent_for_long_keeps_one_socket(
    deepgram_server: FakeDeepgramProcess, speech: dict[str, dd.Pcm]
) -> None:
    """Silence brings no answer (the fake sends nothing while nobody speaks): the watchdog
    waits for voice, so ten times its wait in silence after the caller spoke is no hang."""
    tail = 10 * HANG_AFTER_S
    result = await dd.run(deepgram_server, speech, "none", stt_connect_options(), tail=tail)
    assert result.error is None, result.error
    assert result.hangs == []
    [only] = result.connections
    assert only["close_stream"]
    assert all(any(dd.hears(f, p, least=3) for f in result.finals()) for p in dd.PHRASES)
    assert not result.repeated_words()


async def test_after_a_long_outage_only_the_newest_speech_is_sent(
    deepgram_server: FakeDeepgramProcess, speech: dict[str, dd.Pcm]
) -> None:
    """The worker's AudioGate (here bounded at 1 s) drops the oldest of what waits."""
    bound = 1.0
    result = await dd.run(deepgram_server, speech, "kill", stt_connect_options(), bound)
    plan = dd.script(speech)
    outage = result.listening_again - result.fault_time
    figures = f"outage {outage:.2f} s, dropped {result.dropped:.2f} s"
    assert result.error is None, result.error
    assert outage > bound + 1.0, figures  # longer than the bound, or this proves nothing
    # what was held beyond the bound is gone (the retry interval and the handshake add to
    # the wait, and the kill takes a moment to be noticed)...
    assert outage - bound - 1.0 <= result.dropped <= outage - bound + 1.5, figures
    # ...and nothing else: the new socket got all the rest, up to the end of the call
    [after_restart] = result.connections
    received = int(str(after_restart["audio_bytes"])) // 2
    expected = result.pushed - plan.fault_at - int(result.dropped * dd.RATE)
    expected += round(result.replayed * dd.RATE)  # what the killed socket had not finalized
    assert abs(received - expected) <= LOST_AT_MOST, ((received - expected) / dd.RATE, figures)
    assert result.events  # and the stream still transcribes
    assert any(e.type == stt.SpeechEventType.FINAL_TRANSCRIPT for e in result.events)


async def test_with_the_framework_defaults_a_restart_ends_the_stream(
    deepgram_server: FakeDeepgramProcess, speech: dict[str, dd.Pcm]
) -> None:
    """Why stt_recovery exists: 3 retries 2 s apart do not outlast a 1.5 s + start-up gap."""
    result = await dd.run(deepgram_server, speech, "kill", APIConnectOptions())
    if result.listening_again - result.fault_time < 4.5:
        pytest.skip("the server restarted within the default retries' ~4.2 s")
    assert result.error is not None
    assert not any(dd.hears(f, dd.C) for f in result.finals())


# --- through an AgentSession -------------------------------------------------


@pytest.mark.parametrize("fault", ["drop", "stall"])
async def test_a_session_hears_the_caller_after_a_fault_mid_utterance(
    deepgram_server: FakeDeepgramProcess,
    server: FakeKnowlithicServer,
    speech: dict[str, dd.Pcm],
    fault: str,
) -> None:
    """The rest of the utterance the fault cut, and the next one, become user turns: after
    a drop at once, after a hang once the watchdog gives the socket up (the next utterance
    is said into the hung socket, and replayed)."""
    settings = make_settings(TTS_SERVER_URL=server.url)
    http = aiohttp.ClientSession()
    dg_stt = WatchedSTT(
        api_key=deepgram_server.api_key,
        base_url=deepgram_server.listen_url,
        language="en-US",
        http_session=http,
    )
    tts = agent.build_tts(settings)
    scripted = ScriptedLLM(["Okay."] * 6)
    user_turns: list[str] = []
    errors: list[ErrorEvent] = []
    session = agent.build_session(
        settings,
        vad=silero.VAD.load(),
        tts=tts,
        stt=dg_stt,
        llm=scripted,
        turn_handling=TurnHandlingOptions(turn_detection="stt"),
    )

    def on_item(ev: ConversationItemAddedEvent) -> None:
        if ev.item.type == "message" and ev.item.role == "user":
            user_turns.append(ev.item.text_content or "")

    session.on("conversation_item_added", on_item)
    session.on("error", errors.append)
    timeline = Timeline()
    caller = CallerAudioInput(timeline)
    session.input.audio = caller
    session.output.audio = CapturingAudioOutput()
    try:
        # the worker's agent, with its AudioGate between the caller and the STT
        await session.start(agent.Assistant(instructions="You are a nurse."))
        await caller.say(speech[dd.A].tobytes(), dd.RATE)
        await eventually(lambda: any(dd.hears(t, dd.A) for t in user_turns), timeout=20)
        half = len(speech[dd.B]) // 2
        await caller.say(speech[dd.B][:half].tobytes(), dd.RATE)
        await deepgram_server.control(fault)  # mid-utterance
        await caller.say(speech[dd.B][half:].tobytes(), dd.RATE)
        await asyncio.sleep(dd.GAP_S)
        await caller.say(speech[dd.C].tobytes(), dd.RATE)
        # well within the heartbeat's 45 s, so a hang was not left to it
        await eventually(lambda: any(dd.hears(t, dd.C) for t in user_turns), timeout=30)
    finally:
        await session.aclose()
        await caller.aclose()
        await dg_stt.aclose()
        await tts.aclose()
        await http.close()
    connections: list[dict[str, Any]] = (await deepgram_server.control("stats"))["connections"]
    assert [c["closed_by"] for c in connections][:1] == ["drop" if fault == "drop" else ""]
    assert len(connections) == 2
    # B, cut by the fault, was heard too: its first half replayed to the new socket
    assert any(dd.hears(t, dd.B) for t in user_turns), user_turns
    assert sum(dd.hears(t, dd.A) for t in user_turns) == 1, user_turns
    # the session saw the drop only as a recoverable error, and it never closed on it
    assert errors and all(e.error.recoverable for e in errors)
