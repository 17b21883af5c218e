"""A whole call, offline, with real speech both ways, measured as the caller hears it.

    python -m bench.conversation --script bench/call/scripts/ankle.json \\
        --record call.wav --json call.json [--llm-ttft-ms N] [--framework-defaults]

The session is the one ``agent.py`` builds: the same Silero VAD, end-of-turn model, turn and
interruption settings, TTS plugin, prompt and greeting.  Only what needs a room or the network
is swapped: the room's audio (``bench.call.audio_io``: the caller's speech fed in real time,
the agent's played in real time and cut where it is interrupted), the speech-to-text
(pocketsphinx, ``bench.call.sphinx_stt``) and the LLM (``bench.call.scripted_llm``).  The
caller's lines are spoken by the local TTS server, the same one the agent speaks through, and
the caller reacts to the agent as a person would: it waits for the reply to end (or talks
over it, where the script says so) before its next line.

Everything measured comes from the recording (``bench.call.analysis``); the framework's own
metrics are kept beside it.  ``--set NAME=VALUE`` overrides one of the worker's settings
(``ENDPOINTING_MIN_DELAY=0.2``...), as ``.env`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from livekit.agents import AgentSession, TurnHandlingOptions, inference, llm
from livekit.agents.voice.io import PlaybackFinishedEvent, PlaybackStartedEvent
from livekit.plugins import silero

import agent
from bench.call.analysis import AnalysisError, CallMeasure, Summary, analyze_call
from bench.call.audio_io import CallerAudioInput, ListenerAudioOutput, Timeline
from bench.call.caller_voice import backchannel, speak_line
from bench.call.plot import plot_call
from bench.call.script import CallScript, ScriptError, load_script
from bench.call.scripted_llm import CallLLM
from bench.call.sphinx_stt import SphinxSTT
from bench.common import local_tts_server
from settings import ConfigError, Settings, load_settings
from tts_custom.knowlithictts import TTS

_LOG = logging.getLogger("bench.conversation")

SAMPLE_RATE: Final = 16000
# How long the caller waits for the agent to begin a reply before giving the turn up.
REPLY_TIMEOUT_S: Final = 20.0
# How often the caller checks whether the agent is sounding.
_POLL_S: Final = 0.01
# Silence recorded after the last reply, so its end is in the recording.
TAIL_S: Final = 1.0
FAILED_CALL_WAV: Final = Path("failed-call.wav")
# What the worker needs but the call never uses: the STT and the LLM are swapped.
_OFFLINE_KEYS: Final = {"DEEPGRAM_API_KEY": "offline", "GROQ_API_KEY": "offline"}


def framework_turn_handling() -> TurnHandlingOptions:
    """LiveKit's own defaults for turn taking, with the same local end-of-turn model and VAD
    interruptions the worker uses (the cloud model and adaptive mode need LiveKit Cloud)."""
    return TurnHandlingOptions(
        turn_detection=inference.TurnDetector(version="v1-mini"), interruption={"mode": "vad"}
    )


@dataclass
class TurnLog:
    """What the driver did and saw for one turn, on the timeline's clock."""

    caller_started: float
    caller_ended: float
    reply_started: float | None = None
    barged_in_at: float | None = None
    backchannel_at: float | None = None


class CallFailed(Exception):
    """The recording does not fit its script: the agent went too far off it to measure."""


class EotPredictions(logging.Handler):
    """The end-of-turn model's verdicts, from the framework's debug log ("eot prediction"):
    the probability that the caller was done, against the threshold under which the agent
    waits ``max_delay`` instead of ``min_delay``."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.DEBUG)
        self._timeline = timeline
        self.predictions: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() != "eot prediction":
            return
        self.predictions.append(
            {
                "at": self._timeline.now(),
                "probability": getattr(record, "probability", None),
                "threshold": getattr(record, "unlikely_threshold", None),
                "delay": getattr(record, "endpointing_delay", None),
                "trigger": getattr(record, "trigger", None),
            }
        )


@dataclass
class CallRun:
    """One call: its recording, what the analysis measured, and what the framework said."""

    timeline: Timeline
    measure: CallMeasure
    turns: list[TurnLog]
    framework: list[dict[str, Any]]
    choices: list[dict[str, Any]]
    transcripts: list[str] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)


class AgentEar:
    """When the caller hears the agent start and stop, from the listener's playback events."""

    def __init__(self, output: ListenerAudioOutput, timeline: Timeline) -> None:
        self._output = output
        self._timeline = timeline
        self._changed = asyncio.Event()
        self.starts: list[float] = []
        output.on("playback_started", self._started)
        output.on("playback_finished", self._finished)

    @property
    def playing(self) -> bool:
        """A reply is in progress: sounding, paused or waiting for its next audio."""
        return self._output.busy

    def _started(self, _: PlaybackStartedEvent) -> None:
        self.starts.append(self._timeline.now())
        self._changed.set()

    def _finished(self, _: PlaybackFinishedEvent) -> None:
        self._changed.set()

    async def reply_to(self, said_at: float, timeout: float) -> float | None:
        """When the reply to a line the caller finished at ``said_at`` began to sound: audio
        sounding then (an agent that talked over the end of the line), else the next audio
        to sound, a paused reply resuming included; None if none within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                waited = False
                while not self._output.playing:
                    waited = True
                    await asyncio.sleep(_POLL_S)  # a resume after a pause sends no event
                if self.starts and self.starts[-1] >= said_at:
                    return self.starts[-1]
                return self._timeline.now() if waited else said_at
        return None

    async def quiet(self, timeout: float) -> bool:
        """Until nothing plays; False if the agent still talks after ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.playing:
                    await self._wait()
                return True
        return False

    async def _wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()


@dataclass(frozen=True)
class CallerVoice:
    """Everything the caller says, as 16 kHz PCM: each turn's parts, and a short "um"."""

    lines: list[list[bytes]]
    backchannel: bytes


async def caller_voice(url: str, script: CallScript) -> CallerVoice:
    """Spoken by the TTS server the agent uses too."""
    voice = TTS(base_url=url, sample_rate=SAMPLE_RATE)
    try:
        lines = [await speak_line(voice, turn.caller) for turn in script.turns]
        return CallerVoice(lines=lines, backchannel=await backchannel(voice))
    finally:
        await voice.aclose()


def harness_settings(url: str, overrides: Mapping[str, str]) -> Settings:
    """The worker's settings, as its defaults (or ``--set``) make them."""
    env = {**_OFFLINE_KEYS, "KNOWLITHIC_TTS_SERVER": url, **overrides}
    return load_settings(env, require_livekit=False)


async def drive(
    script: CallScript,
    caller: CallerAudioInput,
    ear: AgentEar,
    timeline: Timeline,
    voice: CallerVoice,
) -> list[TurnLog]:
    """Play the caller's part, reacting to the agent as the script says."""
    logs: list[TurnLog] = []
    if await ear.reply_to(0.0, REPLY_TIMEOUT_S) is None:
        _LOG.warning("the agent never greeted the caller")
    await ear.quiet(REPLY_TIMEOUT_S * 3)
    barging = False
    for index, turn in enumerate(script.turns):
        if not barging:
            await asyncio.sleep(turn.pause_before_s)
        log = TurnLog(caller_started=timeline.now(), caller_ended=0.0)
        for part_index, part in enumerate(voice.lines[index]):
            if part_index:
                await asyncio.sleep(turn.gap_s)
            await caller.say(part, SAMPLE_RATE)
        log.caller_ended = timeline.now()
        logs.append(log)
        log.reply_started = await ear.reply_to(log.caller_ended, REPLY_TIMEOUT_S)
        barging = False
        if log.reply_started is None:
            _LOG.warning("no reply to turn %d", index)
        elif turn.barge_in_after_s is not None:
            # talk over the reply: the next line starts this long after the reply began
            await asyncio.sleep(
                max(0.0, log.reply_started + turn.barge_in_after_s - timeline.now())
            )
            log.barged_in_at = timeline.now()
            barging = True
        else:
            if turn.backchannel_after_s is not None:
                await asyncio.sleep(
                    max(0.0, log.reply_started + turn.backchannel_after_s - timeline.now())
                )
                log.backchannel_at = timeline.now()
                await caller.say(voice.backchannel, SAMPLE_RATE)
            await ear.quiet(REPLY_TIMEOUT_S * 3)
    await asyncio.sleep(TAIL_S)
    return logs


def framework_metrics(session: AgentSession[None], wall_to_timeline: float) -> list[dict[str, Any]]:
    """The framework's own view of every message: its timings and whether it was cut."""
    found: list[dict[str, Any]] = []
    for item in session.history.items:
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant"):
            continue
        metrics: dict[str, Any] = dict(item.metrics or {})
        for key in ("started_speaking_at", "stopped_speaking_at"):
            if key in metrics:
                metrics[key] = float(metrics[key]) - wall_to_timeline  # the recording's clock
        found.append(
            {
                "role": item.role,
                "text": item.text_content or "",
                "interrupted": item.interrupted,
                "metrics": metrics,
            }
        )
    return found


async def run_call(
    script: CallScript,
    *,
    url: str,
    voice: CallerVoice,
    llm_ttft: float,
    framework_defaults: bool,
    overrides: Mapping[str, str],
) -> CallRun:
    settings = harness_settings(url, overrides)
    timeline = Timeline()
    caller = CallerAudioInput(timeline)
    output = ListenerAudioOutput(timeline)
    ear = AgentEar(output, timeline)
    agent_voice = agent.build_tts(settings)
    scripted = CallLLM(script, ttft=llm_ttft)
    recognizer = SphinxSTT(filler_words=settings.deepgram_filler_words)
    vad = silero.VAD.load() if framework_defaults else agent.load_vad(settings)
    session = agent.build_session(
        settings,
        vad=vad,
        tts=agent_voice,
        stt=recognizer,
        llm=scripted,
        turn_handling=framework_turn_handling() if framework_defaults else None,
    )
    session.input.audio = caller
    session.output.audio = output
    transcripts: list[str] = []
    session.on(
        "user_input_transcribed",
        lambda ev: transcripts.append(ev.transcript) if ev.is_final else None,
    )
    agent_voice.prewarm()
    timeline.start()
    wall_to_timeline = time.time() - timeline.now()
    eot = EotPredictions(timeline)
    framework_log = logging.getLogger("livekit.agents")
    framework_log.addHandler(eot)
    if not framework_log.isEnabledFor(logging.DEBUG):
        framework_log.setLevel(logging.DEBUG)  # the verdicts are logged at DEBUG only
    try:
        await session.start(agent.Assistant(instructions=settings.instructions))
        turns = await drive(script, caller, ear, timeline, voice)
        framework = framework_metrics(session, wall_to_timeline)
    finally:
        framework_log.removeHandler(eot)
        await session.aclose()
        await caller.aclose()
        for component in (agent_voice, recognizer, scripted):
            await component.aclose()
    try:
        measure = analyze_call(timeline.samples(), script)
    except AnalysisError as e:
        # keep the evidence of a call that went wrong enough not to fit its script
        timeline.write_wav(FAILED_CALL_WAV)
        raise CallFailed(
            f"the call did not follow its script ({e}); recording: {FAILED_CALL_WAV}"
        ) from e
    return CallRun(
        timeline=timeline,
        measure=measure,
        turns=turns,
        framework=framework,
        choices=[_choice_json(c, timeline) for c in scripted.choices],
        transcripts=transcripts,
        predictions=eot.predictions,
    )


async def run_calls(
    script: CallScript, *, repeat: int, **options: Any
) -> tuple[list[CallRun], list[CallFailed]]:
    """``repeat`` calls, one after another; those that went off their script are counted."""
    runs: list[CallRun] = []
    failures: list[CallFailed] = []
    for _ in range(repeat):
        try:
            runs.append(await run_call(script, **options))
        except CallFailed as e:
            failures.append(e)
    return runs, failures


def _choice_json(choice: Any, timeline: Timeline) -> dict[str, Any]:
    return {
        "kind": choice.kind,
        "transcript": choice.transcript,
        "turn": choice.turn,
        "reply": choice.reply,
        "requested_at": choice.requested_at - timeline.t0,
        "cancelled": choice.cancelled,
    }


def _summary_json(summary: Summary) -> dict[str, Any]:
    return {"n": summary.n, "p50": summary.p50, "p95": summary.p95, "max": summary.max}


def report(
    runs: Sequence[CallRun], *, script_path: Path, args: argparse.Namespace
) -> dict[str, Any]:
    v2v = [
        t.voice_to_voice_s for r in runs for t in r.measure.turns if t.voice_to_voice_s is not None
    ]
    stops = [
        t.barge_in.stop_latency_s
        for r in runs
        for t in r.measure.turns
        if t.barge_in is not None and t.barge_in.stop_latency_s is not None
    ]
    return {
        "script": str(script_path),
        "framework_defaults": args.framework_defaults,
        "llm_ttft_ms": args.llm_ttft_ms,
        "settings": dict(_overrides(args.set)),
        "runs": [
            {
                "measure": run.measure.to_json(),
                "driver": [vars(t) for t in run.turns],
                "transcripts": run.transcripts,
                "choices": run.choices,
                "eot_predictions": run.predictions,
                "framework": run.framework,
            }
            for run in runs
        ],
        "summary": {
            "voice_to_voice_s": _summary_json(Summary.of(v2v)),
            "barge_in_stop_s": _summary_json(Summary.of(stops)),
            "cut_ins": sum(r.measure.cut_ins for r in runs),
            "missed_replies": sum(r.measure.missed_replies for r in runs),
            "backchannels": sum(r.measure.backchannels for r in runs),
            "replies_lost_to_backchannels": sum(
                r.measure.replies_lost_to_backchannels for r in runs
            ),
            "reply_wer": [r.measure.wer for r in runs],
            "replies_misheard": sum(r.measure.replies_misheard for r in runs),
        },
    }


def print_summary(runs: Sequence[CallRun]) -> None:
    print("turn  caller end  reply at  v2v ms  barge-in stop ms  cut-ins  reply WER")
    for n, run in enumerate(runs):
        for t in run.measure.turns:
            v2v = (
                f"{t.voice_to_voice_s * 1000:6.0f}" if t.voice_to_voice_s is not None else "     -"
            )
            stop = (
                f"{t.barge_in.stop_latency_s * 1000:16.0f}"
                if t.barge_in is not None and t.barge_in.stop_latency_s is not None
                else "               -"
            )
            reply_at = f"{t.reply.start:8.2f}" if t.reply is not None else "       -"
            wer = f"{t.reply.wer:.2f}" if t.reply is not None and t.reply.wer is not None else "-"
            print(
                f"{n}.{t.index:<3} {t.caller.end:10.2f}  {reply_at}  {v2v}  {stop}  "
                f"{len(t.cut_ins):7d}  {wer}"
            )


def _overrides(items: Sequence[str] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--set {item!r}: give NAME=VALUE, as in .env")
        found[name.strip()] = value.strip()
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.conversation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--script", type=Path, required=True, help="the call script (JSON)")
    parser.add_argument("--record", type=Path, help="stereo WAV: left caller, right agent")
    parser.add_argument("--json", type=Path, help="every figure, per turn and summarized")
    parser.add_argument(
        "--llm-ttft-ms", type=float, default=0.0, help="the LLM's time to first token"
    )
    parser.add_argument(
        "--framework-defaults",
        action="store_true",
        help="LiveKit's default turn and interruption settings instead of the worker's",
    )
    parser.add_argument("--repeat", type=int, default=1, help="calls to run (default 1)")
    parser.add_argument(
        "--set", action="append", metavar="NAME=VALUE", help="override a worker setting"
    )
    parser.add_argument("--tts-url", help="a running TTS server (default: start one)")
    return parser


@contextlib.asynccontextmanager
async def tts_server(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    # no reply limit: the caller's lines are synthesized in a burst before the call, and would
    # hold the default limit's places while the server reckons they are being listened to
    async with local_tts_server("--max-streams", "0", "--first-audio-target", "0") as started:
        yield started


async def main_async(args: argparse.Namespace) -> int:
    try:
        script = load_script(args.script)
        overrides = _overrides(args.set)
        harness_settings("ws://localhost:8000", overrides)  # refuse bad --set values now
    except (ScriptError, ConfigError) as e:
        print(f"{args.script}: {e}", file=sys.stderr)
        return 2
    if args.llm_ttft_ms < 0 or args.repeat < 1:
        print("--llm-ttft-ms must be >= 0 and --repeat >= 1", file=sys.stderr)
        return 2
    async with tts_server(args.tts_url) as url:
        spoken = await caller_voice(url, script)
        runs, failures = await run_calls(
            script,
            url=url,
            voice=spoken,
            repeat=args.repeat,
            llm_ttft=args.llm_ttft_ms / 1000,
            framework_defaults=args.framework_defaults,
            overrides=overrides,
        )
    for failure in failures:
        print(failure, file=sys.stderr)
    if not runs:
        return 1
    print_summary(runs)
    result = report(runs, script_path=args.script, args=args)
    summary = result["summary"]
    print(json.dumps(summary, indent=1))
    for n, run in enumerate(runs):
        if args.record:
            path = args.record if n == 0 else args.record.with_stem(f"{args.record.stem}-{n}")
            run.timeline.write_wav(path)
            plot_call(run.timeline.samples(), run.measure, path.with_suffix(".png"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"))
    # the root handler shows warnings only, whatever the framework's logger lets through
    for handler in logging.getLogger().handlers:
        handler.setLevel(os.environ.get("LOG_LEVEL", "WARNING"))
    return asyncio.run(main_async(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
