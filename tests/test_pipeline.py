"""The voice pipeline without a room: scripted LLM -> the plugin -> a capturing AudioOutput.

The TTS is the real plugin talking over a real socket to the test server; only the audio
sink and the LLM are stand-ins.  What the session would play must be exactly the speech the
server produced for each sentence of the reply.
"""

from __future__ import annotations

from livekit.agents import Agent, AgentSession

import agent
from tests.audio_capture import CapturingAudioOutput
from tests.conftest import MakeTTS
from tests.fake_knowlithic import FakeKnowlithicServer, speech_for
from tests.plugin_helpers import eventually
from tests.scripted_llm import ScriptedLLM

GREETING = "Hello, I'm Avery, your nurse assistant. How can I help you today?"
REPLY = "I'm sorry to hear about your headache. When did it start? Has it been getting worse?"
INSTRUCTIONS = "You are Avery, a warm nurse assistant."


def expected_pcm(server: FakeKnowlithicServer, first_request: int = 0) -> bytes:
    texts = [r.text for r in server.received.requests[first_request:]]
    return b"".join(speech_for(t, 16000) for t in texts)


async def test_the_session_plays_the_plugins_audio(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    output = CapturingAudioOutput()
    scripted = ScriptedLLM([GREETING, REPLY])
    async with (
        scripted,
        AgentSession[None](
            llm=scripted, tts=tts, vad=None, turn_handling={"turn_detection": None}
        ) as session,
    ):
        session.output.audio = output
        await session.start(agent.Assistant(instructions=INSTRUCTIONS))
        await eventually(lambda: len(output.segments) == 1, timeout=15)

        greeting = output.segments[0]
        assert not greeting.interrupted
        assert greeting.pcm == expected_pcm(server)
        assert {f.sample_rate for f in greeting.frames} == {16000}
        greeting_requests = len(server.received.requests)
        assert greeting_requests == 2  # one request per sentence

        await session.run(user_input="I have a headache.")
        await eventually(lambda: len(output.segments) == 2, timeout=15)
        assert output.segments[1].pcm == expected_pcm(server, greeting_requests)
    assert server.received.connections == 1
    assert [r.text for r in server.received.requests][:2] == [
        "Hello, I'm Avery, your nurse assistant.",
        "How can I help you today?",
    ]


async def test_an_interruption_cancels_the_reply_on_the_server(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.03  # slower than real time: the reply is still streaming
    tts = make_tts()
    output = CapturingAudioOutput()
    scripted = ScriptedLLM([REPLY])
    async with (
        scripted,
        AgentSession[None](
            llm=scripted, tts=tts, vad=None, turn_handling={"turn_detection": None}
        ) as session,
    ):
        session.output.audio = output
        await session.start(Agent(instructions=INSTRUCTIONS))
        handle = session.generate_reply(user_input="I have a headache.")
        await eventually(lambda: output.playing, timeout=10)
        await handle.interrupt()
        await eventually(lambda: bool(server.received.cancels), timeout=5)
        assert output.segments and output.segments[-1].interrupted
        open_ids = {r.request_id for r in server.received.requests}
        assert set(server.received.cancels) <= open_ids
