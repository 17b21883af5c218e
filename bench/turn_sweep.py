"""Turn-taking settings, measured side by side on whole calls: the table behind the defaults.

    python -m bench.turn_sweep [--script FILE] [--repeat N] [--only NAME ...] [--json OUT]

Each configuration runs the same scripted call (``bench.conversation``) ``--repeat`` times
against one local TTS server, with the worker's settings changed as ``.env`` would change
them; the first row is LiveKit's own defaults.  The table has, per configuration, what a
caller feels: voice-to-voice latency (p50/p95, from the recording), agents that started
talking over the caller (cut-ins, mid-sentence pauses included), how fast the agent stopped
when talked over, replies lost to a short "um", and turns never answered.  docs/conversation.md
explains each knob with the figures it gave.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.call.analysis import Summary
from bench.call.script import load_script
from bench.conversation import CallRun, caller_voice, run_calls, tts_server

SCRIPT: Final = Path(__file__).resolve().parent / "call" / "scripts" / "tuning.json"
# an agent that starts this soon after the caller resumed from a pause started because of it
RESUMED_S: Final = 0.5
# an end-of-turn prediction this soon after the caller's last word judged the turn's end
EOT_WINDOW_S: Final = 1.5


@dataclass(frozen=True)
class Config:
    name: str
    settings: Mapping[str, str]
    framework_defaults: bool = False


# From LiveKit's defaults to the worker's, one knob at a time, then together.
CONFIGS: Final = (
    Config("framework defaults", {}, framework_defaults=True),
    Config("VAD silence 0.3 s", {"VAD_MIN_SILENCE_DURATION": "0.3"}),
    Config(
        "+ max delay 1.0 s",
        {"VAD_MIN_SILENCE_DURATION": "0.3", "ENDPOINTING_MAX_DELAY": "1.0"},
    ),
    Config(
        "+ interruption 0.25 s",
        {
            "VAD_MIN_SILENCE_DURATION": "0.3",
            "ENDPOINTING_MAX_DELAY": "1.0",
            "INTERRUPTION_MIN_DURATION": "0.25",
        },
    ),
    Config(
        "+ interruption 0.15 s, resume after 1 s",
        {
            "VAD_MIN_SILENCE_DURATION": "0.3",
            "ENDPOINTING_MAX_DELAY": "1.0",
            "INTERRUPTION_MIN_DURATION": "0.15",
            "FALSE_INTERRUPTION_TIMEOUT": "1.0",
        },
    ),
    Config(
        "+ min delay 0.6 s",
        {
            "VAD_MIN_SILENCE_DURATION": "0.3",
            "ENDPOINTING_MIN_DELAY": "0.6",
            "ENDPOINTING_MAX_DELAY": "1.0",
            "INTERRUPTION_MIN_DURATION": "0.25",
        },
    ),
    Config(
        "+ preemptive TTS",
        {
            "VAD_MIN_SILENCE_DURATION": "0.3",
            "ENDPOINTING_MAX_DELAY": "1.0",
            "INTERRUPTION_MIN_DURATION": "0.25",
            "PREEMPTIVE_TTS": "true",
        },
    ),
    Config("worker defaults", {}),
    Config("worker defaults, min delay 0.8 s", {"ENDPOINTING_MIN_DELAY": "0.8"}),
    Config(
        "worker defaults, min delay 0.9 s",
        {"ENDPOINTING_MIN_DELAY": "0.9", "ENDPOINTING_MAX_DELAY": "1.2"},
    ),
)


def row(config: Config, runs: Sequence[CallRun]) -> dict[str, Any]:
    turns = [t for r in runs for t in r.measure.turns]
    v2v = Summary.of([t.voice_to_voice_s for t in turns if t.voice_to_voice_s is not None])
    stops = Summary.of(
        [
            t.barge_in.stop_latency_s
            for t in turns
            if t.barge_in is not None and t.barge_in.stop_latency_s is not None
        ]
    )
    gap_cut_ins = sum(
        any(
            a.end <= c.start < b.start + RESUMED_S
            for c in t.cut_ins
            for a, b in zip(t.caller_parts, t.caller_parts[1:], strict=False)
        )
        for t in turns
    )
    return {
        "config": config.name,
        "settings": dict(config.settings),
        "framework_defaults": config.framework_defaults,
        "turns": len(turns),
        "v2v_p50_ms": _ms(v2v.p50),
        "v2v_p95_ms": _ms(v2v.p95),
        "cut_ins": sum(r.measure.cut_ins for r in runs),
        "cut_ins_in_pauses": gap_cut_ins,
        "barge_in_stop_p95_ms": _ms(stops.p95),
        "backchannels": sum(r.measure.backchannels for r in runs),
        "replies_lost_to_backchannels": sum(r.measure.replies_lost_to_backchannels for r in runs),
        "missed_replies": sum(r.measure.missed_replies for r in runs),
        "replies_misheard": sum(r.measure.replies_misheard for r in runs),
        "reply_wer": [round(r.measure.wer, 3) if r.measure.wer is not None else None for r in runs],
        "eot_says_done": eot_judgements(runs),
        # where each cut-in fell, to tell one in a pause from one after a barge-in
        "cut_ins_at": [
            {"call": n, "turn": t.index, "start": c.start, "end": c.end}
            for n, r in enumerate(runs)
            for t in r.measure.turns
            for c in t.cut_ins
        ],
    }


def eot_judgements(runs: Sequence[CallRun]) -> dict[str, list[int]]:
    """How often the end-of-turn model said "done" (probability at or over its threshold)
    in a caller's mid-sentence pause, and after the caller's last word: [done, asked]."""
    judged = {"in_pauses": [0, 0], "at_turn_ends": [0, 0]}
    for run in runs:
        for turn in run.measure.turns:
            parts = turn.caller_parts
            windows = [("in_pauses", a.end, b.start) for a, b in itertools.pairwise(parts)]
            windows.append(("at_turn_ends", parts[-1].end, parts[-1].end + EOT_WINDOW_S))
            for prediction in run.predictions:
                for kind, start, end in windows:
                    if start <= prediction["at"] < end:
                        judged[kind][0] += prediction["probability"] >= prediction["threshold"]
                        judged[kind][1] += 1
    return judged


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _ratio(counts: Sequence[int]) -> str:
    return f"{counts[0]} of {counts[1]}"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| configuration | v2v p50 ms | v2v p95 ms | cut-ins (in pauses) | barge-in stop p95 ms "
        '| replies lost to an "um" | turns unanswered | failed calls '
        '| end-of-turn model said "done": in pauses, at ends |',
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['v2v_p50_ms']} | {r['v2v_p95_ms']} | {r['cut_ins']} "
            f"({r['cut_ins_in_pauses']}) | {r['barge_in_stop_p95_ms']} | "
            f"{r['replies_lost_to_backchannels']} of {r['backchannels']} | {r['missed_replies']} "
            f"| {r.get('failed_calls', 0)} | {_ratio(r['eot_says_done']['in_pauses'])}, "
            f"{_ratio(r['eot_says_done']['at_turn_ends'])} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    script = load_script(args.script)
    chosen = [c for c in CONFIGS if not args.only or c.name in args.only]
    rows: list[dict[str, Any]] = []
    async with tts_server(args.tts_url) as url:
        voice = await caller_voice(url, script)
        for config in chosen:
            runs, failures = await run_calls(
                script,
                url=url,
                voice=voice,
                repeat=args.repeat,
                llm_ttft=args.llm_ttft_ms / 1000,
                framework_defaults=config.framework_defaults,
                overrides=config.settings,
            )
            for failure in failures:  # counted: an agent too far off its script
                print(f"{config.name}: {failure}", file=sys.stderr)
            rows.append(row(config, runs) | {"failed_calls": len(failures)})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_sweep", description=__doc__)
    parser.add_argument("--script", type=Path, default=SCRIPT)
    parser.add_argument("--repeat", type=int, default=3, help="calls per configuration")
    parser.add_argument("--only", action="append", help="run only this configuration")
    parser.add_argument("--llm-ttft-ms", type=float, default=0.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tts-url", help="a running TTS server (default: start one)")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
