"""A call when no TTS server can speak: the prepared apology, a wait, then on or goodbye.

An ``AgentSession`` with no room (a capturing audio output, a scripted LLM) speaks through the
real plugin to a port where nothing listens, or to the real TTS server process killed with
SIGKILL mid-reply and started again, or never.  Only the LLM and the speaker are stand-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from livekit.agents import Agent, AgentSession, APIConnectOptions
from livekit.agents.tts import TTSError
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.events import CloseEvent, ErrorEvent

from bench.call.audio_io import CallerAudioInput, Timeline
from tests.audio_capture import CapturingAudioOutput, Segment
from tests.loopback import free_port
from tests.plugin_helpers import eventually, speak
from tests.scripted_llm import ScriptedLLM
from tests.server_process import DETERMINISTIC, ServerProcess
from tts_custom.knowlithictts import TTS
from worker.call_policy.clips import Clip, Clips, load_clips
from worker.call_policy.log_filter import FRAMEWORK_LOGGER, QuietTtsFailures
from worker.call_policy.outage import RESUME_INSTRUCTIONS, OutageOptions, TtsOutagePolicy

RATE = 16000
# A reply's patience (KNOWLITHIC_TIMEOUT); short so the tests are, the policy is the same.
TTS_TIMEOUT = 1.5
GREETING = (
    "Hello, I'm Avery, your nurse assistant. I am here to help you with your questions "
    "about your health today. Please tell me what is on your mind and we will go through it."
)
# Long enough that the server is still synthesizing it when killed at its first audio
# (~90 s of speech: several seconds of synthesis even at Piper's ~30x real time).
LONG_GREETING = " ".join(
    f"Here is part {n} of a long welcome, said slowly so you can follow it." for n in range(30)
)
QUESTION = "I have had a headache since yesterday morning."
ANSWER = "I'm sorry to hear that. Is the pain on one side of your head?"
RESUMED = "Thank you for waiting. How can I help you today?"
INSTRUCTIONS = "You are Avery, a warm nurse assistant."


@pytest.fixture(scope="module")
def clips() -> Clips:
    return load_clips(RATE)


class Microphone(CallerAudioInput):
    """The caller's audio input, noting when the session detaches it: a room's input drops
    the caller's frames while detached (livekit-agents room_io/_input.py)."""

    def __init__(self) -> None:
        timeline = Timeline()
        timeline.start()
        super().__init__(timeline)
        self.attached: list[bool] = []

    def on_attached(self) -> None:
        super().on_attached()
        self.attached.append(True)

    def on_detached(self) -> None:
        super().on_detached()
        self.attached.append(False)


@dataclass
class Call:
    session: AgentSession[None]
    output: CapturingAudioOutput
    policy: TtsOutagePolicy
    llm: ScriptedLLM
    probes: list[TTS]
    microphone: Microphone
    errors: list[ErrorEvent] = field(default_factory=list)
    closed: list[CloseEvent] = field(default_factory=list)
    left_room: asyncio.Event = field(default_factory=asyncio.Event)
    failed_checks: list[float] = field(default_factory=list)
    """When each check that no server passed ended (the checking TTS's error events)."""

    def heard(self, clip: Clip) -> list[Segment]:
        """The played segments that hold the clip's audio, sample for sample."""
        return [s for s in self.output.segments if clip.pcm in s.pcm]


@asynccontextmanager
async def call(
    url: str,
    clips: Clips,
    *,
    wait: float,
    replies: Sequence[str] = (GREETING, RESUMED),
    probe_interval: float = 1.0,
    probe_timeout: float = TTS_TIMEOUT,
) -> AsyncIterator[Call]:
    """A call whose greeting goes through the plugin at ``url``, with the outage policy on;
    the LLM answers ``replies`` in turn."""
    tts = TTS(base_url=url)
    probes: list[TTS] = []

    failed_checks: list[float] = []

    def make_probe_tts() -> TTS:
        probe = TTS(base_url=url)
        probe.on("error", lambda _: failed_checks.append(time.monotonic()))
        probes.append(probe)
        return probe

    llm = ScriptedLLM(replies)
    session = AgentSession[None](
        llm=llm,
        tts=tts,
        vad=None,
        turn_handling={"turn_detection": None},
        conn_options=SessionConnectOptions(
            tts_conn_options=APIConnectOptions(max_retry=3, retry_interval=0.5, timeout=TTS_TIMEOUT)
        ),
    )
    output = CapturingAudioOutput()
    session.output.audio = output
    microphone = Microphone()
    session.input.audio = microphone
    options = OutageOptions(wait=wait, probe_interval=probe_interval, probe_timeout=probe_timeout)
    policy = TtsOutagePolicy(session, clips=clips, make_probe_tts=make_probe_tts, options=options)
    the_call = Call(session, output, policy, llm, probes, microphone, failed_checks=failed_checks)
    policy._on_end = the_call.left_room.set  # the worker's ctx.shutdown: leave the room
    session.on("error", the_call.errors.append)
    session.on("close", the_call.closed.append)
    policy.attach()
    try:
        async with llm:
            await session.start(Agent(instructions=INSTRUCTIONS))
            session.generate_reply(instructions="greet the caller")
            yield the_call
    finally:
        await policy.aclose()
        await session.aclose()
        await tts.aclose()
        await microphone.aclose()
        for probe in probes:
            await probe.aclose()  # the policy closed each already: a second close is a no-op


def assert_one_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["agent.tts_outage"], [r.getMessage() for r in errors]
    [line] = errors
    assert "no TTS server can speak" in line.getMessage()
    assert "\n" not in line.getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text
    for text in (GREETING, LONG_GREETING, QUESTION, ANSWER, RESUMED):  # no conversation text
        assert text[:20] not in caplog.text


def assert_nothing_left_running() -> None:
    pending = [t.get_name() for t in asyncio.all_tasks() if not t.done()]
    assert "tts_outage" not in pending, pending


def final_tts_errors(the_call: Call) -> list[ErrorEvent]:
    return [e for e in the_call.errors if isinstance(e.error, TTSError) and not e.error.recoverable]


async def test_nothing_listening_apology_then_goodbye_and_the_call_ends(
    clips: Clips, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with call(f"ws://127.0.0.1:{free_port()}", clips, wait=3.0) as c:
        await asyncio.wait_for(c.left_room.wait(), timeout=30)
        assert c.policy.ended
        assert [ev.reason for ev in c.closed] == ["user_initiated"]
        apology, goodbye = c.output.segments  # nothing else was played
        assert c.heard(clips.apology) == [apology] and not apology.interrupted
        assert c.heard(clips.goodbye) == [goodbye] and not goodbye.interrupted
        assert (c.policy.outages, c.policy.recoveries) == (1, 0)
        assert final_tts_errors(c)
        assert c.probes and all(p._session is None for p in c.probes)  # closed once done
        # a reply that failed before its first audio is not in the chat (nor are the clips)
        assert not [m for m in c.session.history.messages() if m.role == "assistant"]
        await asyncio.wait_for(c.policy.wait_done(), timeout=5)
    assert_nothing_left_running()
    assert_one_clear_error(caplog)
    assert any("call ends" in r.getMessage() for r in caplog.records)


@pytest.fixture
async def tts_server() -> AsyncIterator[ServerProcess]:
    server = ServerProcess(*DETERMINISTIC)
    await server.start()
    yield server
    await server.stop()


async def kill_between_turns(the_call: Call, server: ServerProcess) -> None:
    """The greeting plays whole, the server dies, then the caller asks something."""
    await eventually(lambda: len(the_call.output.segments) == 1, timeout=30)
    await server.kill()
    the_call.session.generate_reply(user_input=QUESTION)


async def kill_mid_reply(the_call: Call, server: ServerProcess) -> None:
    """The server dies as the long greeting starts playing: most of it is still owed."""
    await eventually(lambda: the_call.output.playing, timeout=30)
    await server.kill()


@pytest.mark.parametrize(
    ("moment", "down"), [("between_turns", 0.0), ("mid_reply", 0.0), ("between_turns", 12.0)]
)
async def test_a_server_killed_mid_call_and_back_within_the_wait_the_call_goes_on(
    moment: str,
    down: float,
    clips: Clips,
    tts_server: ServerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``down``: seconds it stays down after the outage starts; 12 s outlasts the plugin's
    10 s after which it counts a server as down (``TTS.healthy``)."""
    caplog.set_level(logging.INFO)
    between = moment == "between_turns"
    replies = (GREETING, ANSWER, RESUMED) if between else (LONG_GREETING, RESUMED)
    async with call(tts_server.url, clips, wait=20.0, replies=replies) as c:
        await (kill_between_turns if between else kill_mid_reply)(c, tts_server)
        # down longer than a reply's patience: the error reaches the session
        await eventually(lambda: c.policy.outages == 1, timeout=20)
        await eventually(lambda: c.microphone.attached[-1:] == [False])  # not listening
        await asyncio.sleep(down)
        voice = c.session.tts
        assert isinstance(voice, TTS) and voice.healthy is (down < 10)
        await tts_server.start()
        await eventually(lambda: c.policy.recoveries == 1, timeout=20)
        assert c.microphone.attached[-1] is True and c.session.input.audio_enabled
        await eventually(lambda: len(c.output.segments) == 3, timeout=20)
        greeting, apology, resumed = c.output.segments
        assert greeting.interrupted is not between  # cut short when killed under it
        assert c.heard(clips.apology) == [apology]  # once
        assert not c.heard(clips.goodbye)
        # the agent answers again, through the TTS: the server's own rendition of the reply
        reference_tts = TTS(base_url=tts_server.url)
        try:
            reference = await speak(reference_tts, RESUMED)
        finally:
            await reference_tts.aclose()
        assert reference.pcm and reference.pcm in resumed.pcm
        assert not c.policy.ended and not c.closed
        assert c.llm.remaining == 0  # the reply came from the LLM, asked again
        # ...with what the caller said or was cut short of in the chat, and what happened
        *_, last, told = c.llm.chat_contexts[-1].messages()
        if between:  # the answer that never played is not there; the question is
            assert (last.role, last.text_content) == ("user", QUESTION)
        else:
            assert (last.role, last.interrupted) == ("assistant", True)
            assert last.text_content == LONG_GREETING
        assert told.text_content == RESUME_INSTRUCTIONS
        assert len(final_tts_errors(c)) == 1
        assert [p._session for p in c.probes] == [None]  # one checker per outage, closed
    assert_one_clear_error(caplog)
    error, recovered = [r.getMessage() for r in caplog.records if r.name == "agent.tts_outage"]
    assert error.startswith("no TTS server can speak (APIConnectionError: ")
    assert recovered.startswith("a TTS server speaks again ")


async def test_a_server_killed_mid_call_and_never_back_goodbye_and_the_call_ends(
    clips: Clips, tts_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with call(tts_server.url, clips, wait=4.0, replies=(GREETING, ANSWER)) as c:
        await kill_between_turns(c, tts_server)
        await asyncio.wait_for(c.left_room.wait(), timeout=30)
        greeting, apology, goodbye = c.output.segments
        assert not greeting.interrupted
        assert c.heard(clips.apology) == [apology]
        assert c.heard(clips.goodbye) == [goodbye] and not goodbye.interrupted
        assert c.policy.ended and c.policy.recoveries == 0
        assert [ev.reason for ev in c.closed] == ["user_initiated"]
        assert c.llm.remaining == 0  # nothing more was asked of the LLM than the answer
        await asyncio.wait_for(c.policy.wait_done(), timeout=5)
    assert_nothing_left_running()
    assert_one_clear_error(caplog)


async def test_a_caller_who_hangs_up_during_the_outage_ends_it_quietly(
    clips: Clips, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with call(f"ws://127.0.0.1:{free_port()}", clips, wait=20.0) as c:
        await eventually(lambda: c.output.playing and c.policy.outages == 1, timeout=20)
        await c.session.aclose()  # the caller hangs up while the apology plays
        await asyncio.wait_for(c.policy.wait_done(), timeout=5)
        assert not c.policy.ended and not c.left_room.is_set()
        assert c.probes and all(p._session is None for p in c.probes)  # its TTS was closed
        assert not c.heard(clips.goodbye)
        await asyncio.sleep(1.0)  # nothing is still checking the servers or speaking
        assert len(c.output.segments) <= 1
    assert_one_clear_error(caplog)
    assert not any("call ends" in r.getMessage() for r in caplog.records)


async def test_without_the_policy_the_caller_hears_silence_and_the_session_closes_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What livekit-agents 1.8.9 does on its own (docs/reliability.md); the filter the policy
    # installs in this process is taken off for the test.
    framework = logging.getLogger(FRAMEWORK_LOGGER)
    quiet = [f for f in framework.filters if isinstance(f, QuietTtsFailures)]
    for f in quiet:
        framework.removeFilter(f)
    caplog.set_level(logging.INFO)
    tts = TTS(base_url=f"ws://127.0.0.1:{free_port()}")
    llm = ScriptedLLM([ANSWER] * 4)
    output = CapturingAudioOutput()
    closed: list[CloseEvent] = []
    try:
        async with (
            llm,
            AgentSession[None](
                llm=llm,
                tts=tts,
                vad=None,
                turn_handling={"turn_detection": None},
                conn_options=SessionConnectOptions(
                    tts_conn_options=APIConnectOptions(max_retry=3, timeout=TTS_TIMEOUT)
                ),
            ) as session,
        ):
            session.output.audio = output
            session.on("close", closed.append)
            await session.start(Agent(instructions=INSTRUCTIONS))
            for _ in range(4):  # the caller asks four times
                with contextlib.suppress(RuntimeError):  # the session closed under the 4th
                    await session.generate_reply(user_input=QUESTION)
            await eventually(lambda: bool(closed), timeout=10)
    finally:
        await tts.aclose()
        for f in quiet:
            framework.addFilter(f)
    assert not output.segments  # silence throughout
    [close] = closed
    assert close.reason == "error" and isinstance(close.error, TTSError)
    tracebacks = [r for r in caplog.records if r.getMessage() == "Error in _tts_inference_task"]
    # a traceback per failed reply (the 4th's task may be cancelled by the close first)
    assert len(tracebacks) >= 3 and all(r.exc_info for r in tracebacks)
    closing = "AgentSession is closing due to unrecoverable error"
    assert any(r.getMessage().startswith(closing) for r in caplog.records)


async def test_checks_back_off_to_the_probe_interval(clips: Clips) -> None:
    # Short checks against a dead port, so the pauses between them show: 0.5 s, 1 s, then
    # the 2 s cap (plus each check's 0.3 s), not a check every moment and no gap beyond it.
    async with call(
        f"ws://127.0.0.1:{free_port()}", clips, wait=8.0, probe_interval=2.0, probe_timeout=0.3
    ) as c:
        await asyncio.wait_for(c.left_room.wait(), timeout=30)
    checks = c.failed_checks
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    assert 4 <= len(checks) <= 6, gaps  # 0.5 s apart throughout would be 10
    assert gaps[0] < gaps[1] < gaps[2] + 0.3
    assert all(gap < 2.0 + 0.3 + 1.0 for gap in gaps)  # bounded (generous: a shared machine)
