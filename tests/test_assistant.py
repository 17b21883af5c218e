"""The assistant in text mode with a scripted LLM, and the session wiring built from Settings.

No network and no API keys: the keys below are placeholders that are never sent anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from livekit import rtc
from livekit.agents import AgentSession, inference, llm, room_io
from livekit.agents.job import JobExecutorType, JobProcess
from livekit.agents.voice.run_result import RunResult
from livekit.plugins import groq, silero

import agent
from settings import PROMPTS_DIR, Settings
from tests.scripted_llm import ScriptedLLM
from tests.worker_settings import FAKE_ENV, settings
from tts_custom.knowlithictts import TTS as KnowlithicTTS
from worker.call_policy.clips import Clips
from worker.call_policy.outage import OutageOptions
from worker.llm_chain import ModelChain
from worker.stt_watchdog import WatchedSTT

SETTINGS_VARIABLES = [
    *FAKE_ENV,
    "DEEPGRAM_MODEL",
    "DEEPGRAM_LANGUAGE",
    "GROQ_MODEL",
    "GROQ_FALLBACK_MODELS",
    "GROQ_ATTEMPT_TIMEOUT",
    "GROQ_BASE_URL",
    "KNOWLITHIC_TTS_SERVER",
    "TTS_SERVER_URL",
    "KNOWLITHIC_API_KEY",
    "KNOWLITHIC_VOICE",
    "KNOWLITHIC_SAMPLE_RATE",
    "KNOWLITHIC_TIMEOUT",
    "VAD_ACTIVATION_THRESHOLD",
    "VAD_MIN_SPEECH_DURATION",
    "VAD_MIN_SILENCE_DURATION",
    "ENDPOINTING_MIN_DELAY",
    "ENDPOINTING_MAX_DELAY",
    "INTERRUPTION_MIN_DURATION",
    "FALSE_INTERRUPTION_TIMEOUT",
    "PREEMPTIVE_GENERATION",
    "NOISE_CANCELLATION",
    "AGENT_PROMPT",
    "SYSTEM_PROMPT",
]
AVERY = (PROMPTS_DIR / "avery.md").read_text(encoding="utf-8").strip()
GREETING = "Hello, I'm Avery, an AI nurse assistant. How can I help you today?"
REPLY = "I'm sorry you have a headache. When did it start?"


def system_messages(chat_ctx: llm.ChatContext) -> list[str]:
    return [
        m.text_content or ""
        for m in chat_ctx.messages()
        if m.role in ("system", "developer") and m.text_content
    ]


# --- conversation ------------------------------------------------------------


async def start(session: AgentSession[None], instructions: str) -> RunResult[None]:
    """Start the assistant; return its first turn (on_enter's greeting) once it is done."""
    greeting = await session.start(agent.Assistant(instructions=instructions), capture_run=True)
    return await greeting


async def test_greets_the_caller_on_enter() -> None:
    scripted = ScriptedLLM([GREETING])
    async with scripted, AgentSession[None](llm=scripted) as session:
        greeting = await start(session, settings().instructions)

    greeting.expect.skip_next_event_if(type="agent_handoff")
    message = greeting.expect.next_event().is_message(role="assistant")
    assert message.event().item.text_content == GREETING
    greeting.expect.no_more_events()

    (seen,) = scripted.chat_contexts
    assert system_messages(seen) == [AVERY, agent.GREETING_INSTRUCTIONS]


async def test_replies_with_the_llm_text_under_the_avery_prompt() -> None:
    scripted = ScriptedLLM([GREETING, REPLY])
    async with scripted, AgentSession[None](llm=scripted) as session:
        await start(session, settings().instructions)
        result: RunResult[None] = await session.run(
            user_input="I have had a headache since this morning."
        )

    message = result.expect.next_event().is_message(role="assistant")
    assert message.event().item.text_content == REPLY
    result.expect.no_more_events()
    assert scripted.remaining == 0

    seen = scripted.chat_contexts[-1]
    assert system_messages(seen)[0] == AVERY
    turns = [(m.role, m.text_content) for m in seen.messages() if m.role != "system"]
    assert turns == [
        ("assistant", GREETING),
        ("user", "I have had a headache since this morning."),
    ]


async def test_system_prompt_setting_reaches_the_llm() -> None:
    scripted = ScriptedLLM([GREETING])
    instructions = settings(SYSTEM_PROMPT="You are Bo. Answer in five words.").instructions
    async with scripted, AgentSession[None](llm=scripted) as session:
        await start(session, instructions)

    assert system_messages(scripted.chat_contexts[0])[0] == "You are Bo. Answer in five words."


# --- wiring from Settings ----------------------------------------------------


async def test_build_session_wires_every_component(monkeypatch: pytest.MonkeyPatch) -> None:
    # AgentSession prewarms the LLM's HTTPS connection; keep the test off the network.
    monkeypatch.setattr(groq.LLM, "prewarm", lambda self, **_: None)
    config = settings(
        DEEPGRAM_MODEL="nova-2",
        DEEPGRAM_LANGUAGE="en-US",
        GROQ_MODEL="openai/gpt-oss-20b",
        KNOWLITHIC_VOICE="joe",
        KNOWLITHIC_SAMPLE_RATE="22050",
        KNOWLITHIC_OUTPUT_FORMAT="pcm",
        VAD_ACTIVATION_THRESHOLD="0.6",
        ENDPOINTING_MIN_DELAY="0.4",
        ENDPOINTING_MAX_DELAY="2.0",
        INTERRUPTION_MIN_DURATION="0.3",
        FALSE_INTERRUPTION_TIMEOUT="1.5",
        PREEMPTIVE_GENERATION="false",
    )
    vad = agent.load_vad(config)
    voice = agent.build_tts(config)
    session = agent.build_session(config, vad=vad, tts=voice)
    try:
        # Deepgram, with the hang watchdog and replay (worker/stt_watchdog.py)
        assert isinstance(session.stt, WatchedSTT)
        assert session.stt.model == "nova-2"
        # the configured model first, then the default fallbacks, all through the groq plugin
        assert isinstance(session.llm, ModelChain)
        assert session.llm.models == [
            "openai/gpt-oss-20b",
            "openai/gpt-oss-120b",
            "llama-3.1-8b-instant",
        ]
        assert all(isinstance(m, groq.LLM) for m in session.llm._llm_instances)
        assert session.llm.model == "openai/gpt-oss-20b"
        assert session.tts is voice
        assert session.vad is vad

        assert isinstance(voice, KnowlithicTTS)
        assert voice.sample_rate == 22050
        assert voice._opts.output_format == "pcm"
        assert voice.capabilities.aligned_transcript
        assert session.options.use_tts_aligned_transcript is True

        detector = session.turn_detection
        assert isinstance(detector, inference.TurnDetector)
        assert detector.model == "turn-detector-v1-mini"
        assert session.interruption_detection == "vad"
        # turn taking as the settings say (ENDPOINTING_*, INTERRUPTION_*, ...)
        options = session.options
        assert options.endpointing["min_delay"] == 0.4
        assert options.endpointing["max_delay"] == 2.0
        assert options.interruption["min_duration"] == 0.3
        assert options.interruption["false_interruption_timeout"] == 1.5
        assert options.interruption["resume_false_interruption"] is True
        assert options.preemptive_generation["enabled"] is False
    finally:
        await voice.aclose()
        for component in (session.llm, session.stt):
            if component is not None:
                await component.aclose()


@pytest.mark.parametrize(("raw", "seconds"), [(None, 5.0), ("3", 3.0), ("12.5", 12.5)])
async def test_the_worker_chooses_how_long_a_tts_fault_may_last(
    raw: str | None, seconds: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(groq.LLM, "prewarm", lambda self, **_: None)
    config = settings(**({"KNOWLITHIC_TIMEOUT": raw} if raw is not None else {}))
    voice = agent.build_tts(config)
    session = agent.build_session(config, vad=agent.load_vad(config), tts=voice)
    try:
        options = session.conn_options.tts_conn_options
        # the plugin shares this time among every retry of a reply: it bounds the silence
        assert options.timeout == seconds
        assert options.retry_interval < seconds
    finally:
        await voice.aclose()
        for component in (session.llm, session.stt):
            if component is not None:
                await component.aclose()


def test_the_worker_applies_the_outage_settings() -> None:
    options = agent.outage_options(
        settings(TTS_OUTAGE_WAIT="30", TTS_PROBE_INTERVAL="4", KNOWLITHIC_TIMEOUT="3")
    )
    assert options == OutageOptions(wait=30.0, probe_interval=4.0, probe_timeout=3.0)


def test_vad_uses_the_validated_thresholds() -> None:
    vad = agent.load_vad(
        settings(
            VAD_ACTIVATION_THRESHOLD="0.7",
            VAD_MIN_SPEECH_DURATION="0.1",
            VAD_MIN_SILENCE_DURATION="1.25",
        )
    )
    assert isinstance(vad, silero.VAD)
    opts = vad._opts
    assert (opts.activation_threshold, opts.min_speech_duration, opts.min_silence_duration) == (
        0.7,
        0.1,
        1.25,
    )


@pytest.mark.parametrize(("flag", "enabled"), [("true", True), ("false", False)])
def test_noise_cancellation_follows_the_setting(flag: str, enabled: bool) -> None:
    options = agent.build_room_options(settings(NOISE_CANCELLATION=flag))
    audio_input = options.audio_input
    assert not isinstance(audio_input, bool)
    assert isinstance(audio_input, room_io.AudioInputOptions)
    if enabled:
        assert isinstance(audio_input.noise_cancellation, rtc.NoiseCancellationOptions)
    else:
        assert audio_input.noise_cancellation is None


def test_process_setup_validates_settings_and_loads_vad(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # Job processes get their LiveKit connection from the worker: no LIVEKIT_* needed.
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-placeholder")
    monkeypatch.setenv("GROQ_API_KEY", "gsk-placeholder")
    monkeypatch.setenv("VAD_ACTIVATION_THRESHOLD", "0.4")

    proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
    agent.setup_process(proc)

    loaded = proc.userdata["settings"]
    assert isinstance(loaded, Settings)
    assert loaded.instructions == AVERY
    assert isinstance(proc.userdata["vad"], silero.VAD)
    assert proc.userdata["vad"]._opts.activation_threshold == 0.4
    # the clips played when no TTS can speak are decoded here, once, at the TTS's rate
    clips = proc.userdata["clips"]
    assert isinstance(clips, Clips)
    assert clips.apology.sample_rate == clips.goodbye.sample_rate == loaded.tts_sample_rate
    assert clips.apology.duration > 3
