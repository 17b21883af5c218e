"""The voice-agent worker: Avery, a nurse assistant, on LiveKit Agents.

Speech flows Deepgram STT -> Groq LLM -> Knowlithic TTS (our websocket plugin, normally the
self-hosted server in tts_server/), with Silero VAD, a local turn detector and BVC noise
cancellation on the caller's audio.  All configuration comes from settings.py.

    python agent.py download-files   # nothing to configure; safe in a Docker build
    python agent.py console          # talk to the agent locally (no LiveKit server needed)
    python agent.py dev | start      # join rooms on the LiveKit server in LIVEKIT_URL
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from dotenv import load_dotenv
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    APIConnectOptions,
    JobContext,
    JobProcess,
    TurnHandlingOptions,
    cli,
    inference,
    room_io,
    utils,
)
from livekit.agents.llm import LLM
from livekit.agents.stt import STT
from livekit.agents.tts import TTS as BaseTTS
from livekit.agents.vad import VAD
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.plugins import noise_cancellation, silero

from settings import ConfigError, Settings, load_settings
from tts_custom.knowlithictts import TTS as KnowlithicTTS
from worker.call_policy.clips import Clips, load_clips
from worker.call_policy.outage import OutageOptions, TtsOutagePolicy
from worker.livekit_link import LinkWatch, WatchedAgentServer
from worker.llm_chain import build_chain
from worker.stt_recovery import gated_stt_node, stt_connect_options
from worker.stt_watchdog import WatchedSTT
from worker.voice_language import check_voice_language

logger = logging.getLogger("agent")

GREETING_INSTRUCTIONS: Final = (
    "The caller has just joined. Greet them warmly in one or two short sentences, "
    "introduce yourself, and ask how you can help today."
)

# Subcommands that run the agent, and whether they need the LiveKit credentials.  `console`
# talks to a local terminal and never connects to a server.  Everything else (download-files,
# --help) must work on a fresh machine with no configuration at all.
_RUN_COMMANDS: Final[Mapping[str, bool]] = {
    "start": True,
    "dev": True,
    "connect": True,
    "console": False,
}
# Flags of those subcommands that stand in for the LiveKit variables.
_LIVEKIT_FLAGS: Final[Mapping[str, str]] = {
    "--url": "LIVEKIT_URL",
    "--api-key": "LIVEKIT_API_KEY",
    "--api-secret": "LIVEKIT_API_SECRET",
}


class Assistant(Agent):
    """The agent the caller talks to; ``instructions`` is its system prompt."""

    def __init__(self, *, instructions: str) -> None:
        super().__init__(instructions=instructions)

    # While Deepgram reconnects, only the caller's latest speech waits for it.
    stt_node = gated_stt_node

    async def on_enter(self) -> None:
        # Speak first, so the caller is not left in silence wondering whether anyone is there.
        self.session.generate_reply(instructions=GREETING_INSTRUCTIONS)


# --- building blocks, each from validated Settings ---------------------------


def load_dotenv_from_cwd() -> None:
    """Read ``.env`` from the working directory; real environment variables win.

    Only the working directory: a run from elsewhere (the tests, a container) never picks up
    a developer's .env from next to this file.
    """
    load_dotenv(Path.cwd() / ".env", override=False)


def load_vad(settings: Settings) -> VAD:
    return silero.VAD.load(
        activation_threshold=settings.vad_activation_threshold,
        min_speech_duration=settings.vad_min_speech_duration,
        min_silence_duration=settings.vad_min_silence_duration,
    )


def build_tts(settings: Settings) -> KnowlithicTTS:
    return KnowlithicTTS(
        base_url=settings.tts_server_url,
        voice=settings.tts_voice,
        sample_rate=settings.tts_sample_rate,
        output_format=settings.tts_output_format,
        api_key=settings.tts_api_key,
        transport=settings.tts_transport,
    )


def tts_connect_options(settings: Settings) -> APIConnectOptions:
    """How long a TTS fault may keep the caller in silence before the session hears of it.

    The plugin shares ``timeout`` between everything one reply does to recover (waiting for a
    restarting server, asking again, the framework's retries), so ``timeout`` bounds the
    silence whatever ``max_retry`` is; the retries only help within it, 0.5 s apart rather
    than the framework's 2 s, which would use most of the time waiting.
    """
    return APIConnectOptions(max_retry=3, retry_interval=0.5, timeout=settings.tts_timeout)


def outage_options(settings: Settings) -> OutageOptions:
    """What the call does once no TTS server can speak (call_policy/outage.py): a check may
    wait as long as a reply does."""
    return OutageOptions(
        wait=settings.tts_outage_wait,
        probe_interval=settings.tts_probe_interval,
        probe_timeout=settings.tts_timeout,
    )


def build_turn_handling(settings: Settings) -> TurnHandlingOptions:
    return TurnHandlingOptions(
        # The v1-mini end-of-turn model runs in-process from weights bundled with
        # livekit-local-inference: no download, no network.  Left unpinned, the framework picks
        # the cloud "v1" model in dev mode, which only LiveKit Cloud serves.  The model listens
        # to audio rather than reading text, and languages without a tuned threshold use the
        # English one, so it also serves a DEEPGRAM_LANGUAGE other than the default en.
        turn_detection=inference.TurnDetector(version="v1-mini"),
        endpointing={
            "min_delay": settings.endpointing_min_delay,
            "max_delay": settings.endpointing_max_delay,
        },
        # "adaptive" interruption calls LiveKit Cloud inference; VAD works on any server and
        # behaves the same in dev and production.
        interruption={
            "mode": "vad",
            "min_duration": settings.interruption_min_duration,
            "false_interruption_timeout": settings.false_interruption_timeout,
            "resume_false_interruption": True,
        },
        preemptive_generation={
            "enabled": settings.preemptive_generation,
            "preemptive_tts": settings.preemptive_tts,
        },
    )


def build_stt(settings: Settings) -> STT[Any]:
    # deepgram.STT that gives up a hung socket in seconds and replays what it swallowed
    return WatchedSTT(
        model=settings.deepgram_model,
        language=settings.deepgram_language,
        api_key=settings.deepgram_api_key,
        # Off: an "mm-hm" over the agent then brings no transcript, so the agent goes on with
        # its reply (a transcript would end it); the end-of-turn model listens to audio, so
        # it loses nothing.  docs/conversation.md has the measurement.
        filler_words=settings.deepgram_filler_words,
    )


def build_llm(settings: Settings) -> LLM[Any]:
    """GROQ_MODEL, then each of GROQ_FALLBACK_MODELS when the one before fails (llm_chain.py)."""
    return build_chain(
        [settings.groq_model, *settings.groq_fallback_models],
        api_key=settings.groq_api_key,
        base_url=settings.groq_base_url,
        attempt_timeout=settings.groq_attempt_timeout,
    )


def build_session(
    settings: Settings,
    *,
    vad: VAD,
    tts: BaseTTS[Any],
    stt: STT[Any] | None = None,
    llm: LLM[Any] | None = None,
    turn_handling: TurnHandlingOptions | None = None,
) -> AgentSession[None]:
    """The call's session; the conversation harness swaps the STT and the LLM, which need
    the network, and compares turn handling with the framework's own."""
    return AgentSession(
        stt=stt or build_stt(settings),
        llm=llm or build_llm(settings),
        tts=tts,
        vad=vad,
        turn_handling=turn_handling or build_turn_handling(settings),
        # The Knowlithic plugin sends word timings, so captions follow the audio word by word.
        use_tts_aligned_transcript=True,
        conn_options=SessionConnectOptions(
            tts_conn_options=tts_connect_options(settings), stt_conn_options=stt_connect_options()
        ),
    )


def build_room_options(settings: Settings) -> room_io.RoomOptions:
    # BVC needs the noise-cancellation filter on the LiveKit server (LiveKit Cloud has it);
    # self-hosted servers without it set NOISE_CANCELLATION=false.
    filter_ = noise_cancellation.BVC() if settings.noise_cancellation else None
    return room_io.RoomOptions(audio_input=room_io.AudioInputOptions(noise_cancellation=filter_))


# --- the worker --------------------------------------------------------------


def setup_process(proc: JobProcess) -> None:
    """Per job process, before any job: validate the settings once, load the VAD model and
    decode the clips played when no TTS can speak (at the TTS's rate, like its audio)."""
    load_dotenv_from_cwd()
    # The worker hands job processes their LiveKit connection; only the worker needs the keys.
    settings = load_settings(os.environ, require_livekit=False)
    proc.userdata["settings"] = settings
    proc.userdata["vad"] = load_vad(settings)
    proc.userdata["clips"] = load_clips(settings.tts_sample_rate)


# --- capacity: when LiveKit stops sending this worker calls ------------------
#
# LiveKit hands each new call to one of the registered workers that report themselves
# available; this worker reports itself full while worker_load() >= LOAD_THRESHOLD.  The load
# is the larger of two shares of the worker's capacity, so it stops taking calls at whichever
# limit it reaches first (README.md, "Scaling"):
#   calls  each call is a process of its own with Silero VAD and its audio pipeline (70-150 MB of
#          its own memory before the call starts, measured), so the count of calls is what
#          bounds memory: pods are sized for MAX_CALLS_PER_WORKER of them;
#   CPU    the container's CPU use over the CPUs it may use (cgroup-aware; NUM_CPUS when no CPU
#          limit is set), against MAX_CPU_SHARE: the headroom keeps audio from waiting on a core
#          when calls are heavier than planned.
MAX_CALLS_PER_WORKER: Final = 8
MAX_CPU_SHARE: Final = 0.7
LOAD_THRESHOLD: Final = 1.0
# Processes kept loaded so a new call starts at once.  The framework's default is one per CPU
# of the host, which on a large machine holds gigabytes for calls that may never come.
IDLE_PROCESSES: Final = 2
# On SIGTERM the worker stops taking calls and waits this long for the ones in progress; keep
# it under the orchestrator's grace period (600 s in deploy/k8s and compose.yaml).
DRAIN_TIMEOUT_S: Final = 540


def combined_load(calls: int, cpu_share: float) -> float:
    """The worker's load from its calls in progress and its CPU share: 1.0 is full."""
    return max(calls / MAX_CALLS_PER_WORKER, cpu_share / MAX_CPU_SHARE)


class _CpuSampler:
    """CPU share averaged over the last 2.5 s, sampled on a background thread.

    The framework asks for the load before answering each job offer, so reading it must never
    block; the thread starts on the first read, in the worker process only.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._average = utils.MovingAverage(5)
        self._thread: threading.Thread | None = None

    def share(self) -> float:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cpu_share", daemon=True)
                self._thread.start()
            return self._average.get_avg()

    def _run(self) -> None:
        monitor = utils.hw.get_cpu_monitor()
        while True:
            share = monitor.cpu_percent(interval=0.5)
            with self._lock:
                self._average.add_sample(share)


_cpu = _CpuSampler()


def worker_load(server: AgentServer) -> float:
    return combined_load(len(server.active_jobs), _cpu.share())


server = WatchedAgentServer(
    setup_fnc=setup_process,
    load_fnc=worker_load,
    load_threshold=LOAD_THRESHOLD,
    num_idle_processes=IDLE_PROCESSES,
    drain_timeout=DRAIN_TIMEOUT_S,
)


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    settings: Settings = ctx.proc.userdata["settings"]
    ctx.log_context_fields = {"room": ctx.room.name}

    voice = build_tts(settings)
    # Open the TTS websocket now, while the room connects, so the greeting does not wait on it.
    voice.prewarm()
    ctx.add_shutdown_callback(voice.aclose)

    model = build_llm(settings)
    # Its recovery probes run in the background until it is closed.
    ctx.add_shutdown_callback(model.aclose)

    session = build_session(settings, vad=ctx.proc.userdata["vad"], tts=voice, llm=model)
    clips: Clips = ctx.proc.userdata["clips"]
    # When no TTS server can speak: the prepared apology, a wait, then on or goodbye, and
    # leaving the room then ends the job.
    outage = TtsOutagePolicy(
        session,
        clips=clips,
        make_probe_tts=lambda: build_tts(settings),
        options=outage_options(settings),
        on_end=lambda: ctx.shutdown(reason="no TTS server could speak"),
    ).attach()
    ctx.add_shutdown_callback(outage.aclose)

    async def log_usage() -> None:
        usage = ", ".join(repr(u) for u in session.usage.model_usage) or "none"
        logger.info("session usage: %s", usage)

    ctx.add_shutdown_callback(log_usage)
    logger.info(
        "starting session",
        extra={
            "stt_model": settings.deepgram_model,
            "llm_model": settings.groq_model,
            "llm_fallbacks": ",".join(settings.groq_fallback_models),
            "tts_voice": settings.tts_voice,
            "prompt": settings.prompt_source,
            "noise_cancellation": settings.noise_cancellation,
        },
    )
    await session.start(
        agent=Assistant(instructions=settings.instructions),
        room=ctx.room,
        room_options=build_room_options(settings),
    )


# --- start-up check ----------------------------------------------------------


def check_config(args: Sequence[str], environ: Mapping[str, str]) -> Settings | None:
    """Validate the configuration the subcommand in ``args`` needs.

    Returns ``None`` when it needs none (download-files, --help), the settings otherwise, and
    raises :class:`ConfigError` naming every problem.  ``cli.run_app`` takes no options before
    the subcommand, so the subcommand is ``args[0]``.
    """
    if not args or args[0] not in _RUN_COMMANDS or "--help" in args:
        return None
    needs_livekit = _RUN_COMMANDS[args[0]]
    return load_settings({**environ, **_livekit_flags(args)}, require_livekit=needs_livekit)


def _livekit_flags(args: Sequence[str]) -> dict[str, str]:
    """The LiveKit variables given as ``--url X`` or ``--url=X`` (the CLI prefers them)."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        flag, has_value, value = arg.partition("=")
        if flag in _LIVEKIT_FLAGS:
            if not has_value:
                value = args[i + 1] if i + 1 < len(args) else ""
            found[_LIVEKIT_FLAGS[flag]] = value
    return found


PORTAUDIO_HELP: Final = (
    "PortAudio, the sound library console mode plays and records through, is not installed; "
    "install it (Debian/Ubuntu: sudo apt-get install libportaudio2; Fedora: sudo dnf install "
    "portaudio; macOS: brew install portaudio) and run this again"
)


def check_console_audio(args: Sequence[str]) -> str | None:
    """For ``console``: why the terminal cannot play and record sound, or None if it can."""
    if not args or args[0] != "console" or "--help" in args:
        return None
    try:  # the framework's console imports it only once the worker has started
        import sounddevice  # type: ignore[import-untyped]  # noqa: F401, PLC0415
    except OSError:  # sounddevice raises it when it cannot load the PortAudio library
        return PORTAUDIO_HELP
    return None


def main() -> None:
    load_dotenv_from_cwd()
    if problem := check_console_audio(sys.argv[1:]):
        print(f"{Path(sys.argv[0]).name} console: {problem}", file=sys.stderr)
        sys.exit(1)
    try:
        settings = check_config(sys.argv[1:], os.environ)
    except ConfigError as e:
        # The framework would start anyway (and exit 0 without a LiveKit URL): stop here with
        # the whole list, before any process is spawned.
        print(
            f"{Path(sys.argv[0]).name} {sys.argv[1]}: {e}\n"
            "Set these in the environment or in a .env file in the working directory "
            "(see .env.example).",
            file=sys.stderr,
        )
        sys.exit(1)
    prog = f"{Path(sys.argv[0]).name} {sys.argv[1]}" if settings is not None else ""
    if settings is not None and (
        mismatch := check_voice_language(
            settings.deepgram_language,
            settings.tts_server_url,
            settings.tts_voice,
            settings.tts_api_key,
        )
    ):
        print(f"{prog}: warning: {mismatch}", file=sys.stderr, flush=True)
    if settings is not None and settings.livekit_url is not None:  # dev, start, connect
        server.link = LinkWatch(
            prog,
            settings.livekit_url,
            give_up_after=settings.livekit_connect_timeout,
        )
        server.link.attach(server)
    try:
        cli.run_app(server)  # ends in SystemExit(0) even when the worker gave up
    finally:
        if server.link is not None and (line := server.link.verdict()) is not None:
            print(line, file=sys.stderr, flush=True)
            sys.exit(1)  # replaces the CLI's exit 0


if __name__ == "__main__":
    main()
