"""How long the agent is deaf when Deepgram's socket drops.

    python -m bench.stt_drop                  # both faults, 3 runs each, about 3 minutes
    python -m bench.stt_drop --fault stall --runs 1          # a hung socket, about 25 s
    python -m bench.stt_drop --fault kill --runs 1 --defaults   # the framework's retries

A real ``deepgram.STT`` stream, with the worker's retry policy and ``AudioGate``
(``stt_recovery``) and hang watchdog and replay (``stt_watchdog.WatchedSTT``) unless
``--defaults`` (the plugin's own STT, the framework's retries), listens to Piper's speech
at real-time pace (phrases A, B, C; the fault halfway through B, C right after B) served
by tests/fake_deepgram.py, a process of its own:

* ``drop``: every socket closed at the TCP level, no close frame; the server stays up;
* ``kill``: SIGKILL, a new process started 1.5 s later on the same port (it listens once its
  recognizers are loaded);
* ``stall`` (``--fault stall`` only): the socket hangs, new ones are served; the worker's
  watchdog (``stt_watchdog``) gives it up (with ``--defaults``, the plugin's own STT: only
  aiohttp's 45 s heartbeat does, so the call then goes on 55 s after C, ~80 s a run).

Per run, on one clock: fault → the server listens again (kill only: its own restart) → the
first audio on the new socket (the STT processes the caller's audio again) → the first words
of C transcribed (the first speech that started after the fault).  Beside it, how late C's
first words are after C began, against A's (no fault) in the same run, the audio lost at
the fault (audio after it the new socket never got) and the audio replayed (what the old
socket had not finalized, sent again to the new one: from the end of A's final on).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Sequence

from livekit.agents import APIConnectOptions

from bench.common import machine, table
from tests import deepgram_drop as dd
from tests.fake_deepgram import FakeDeepgramProcess
from worker.stt_recovery import MAX_BACKLOG_S, stt_connect_options


def measure(result: dd.Run, plan: dd.Script) -> dict[str, float]:
    fault = result.fault_time
    new_socket = result.connections[-1]
    first_audio = float(str(new_socket["first_audio_at"]))
    heard_a, heard_c = result.first_heard(dd.A), result.first_heard(dd.C)
    final_c = result.first_heard(dd.C, final=True)
    nan = float("nan")
    return {
        "listening": result.listening_again - fault,
        "audio": first_audio - fault,
        "after listening": first_audio - result.listening_again,
        "C heard": heard_c.at - fault if heard_c else nan,
        "C final": final_c.at - fault if final_c else nan,
        "C late": heard_c.at - result.time_of(plan.starts[dd.C]) if heard_c else nan,
        "A late": heard_a.at - result.time_of(plan.starts[dd.A]) if heard_a else nan,
        "lost": max(dd.resumed_from(result) - plan.fault_at, 0) / dd.RATE,
        "replayed": result.replayed,
    }


async def bench(
    faults: Sequence[dd.Fault], runs: int, options: APIConnectOptions, backlog: float | None
) -> None:
    speech = dd.render(dd.PHRASES)
    plan = dd.script(speech)
    rows: list[list[object]] = []
    for fault in faults:
        figures: list[dict[str, float]] = []
        failed = 0
        gave_up: list[float] = []  # seconds from the fault, when the stream gave up
        listening: list[float] = []
        for _ in range(runs):
            server = FakeDeepgramProcess()
            await server.start()
            try:
                # without the watchdog a stall is noticed by the 45 s heartbeat alone: the
                # call must still be going on
                watchdog = backlog is not None
                tail = 55.0 if fault == "stall" and not watchdog else 2.0
                result = await dd.run(
                    server, speech, fault, options, backlog, tail, watchdog=watchdog
                )
            finally:
                await server.stop()
            if result.error is not None:
                failed += 1
                gave_up.append(result.error_at - result.fault_time)
                listening.append(result.listening_again - result.fault_time)
                print(f"{fault}: the stream gave up after {gave_up[-1]:.2f} s: {result.error!r}")
                continue
            figures.append(measure(result, plan))
            print(fault, {k: round(v, 3) for k, v in figures[-1].items()})
        if not figures:
            when = f"{failed}/{runs}, after {statistics.median(gave_up):.2f}"
            rows.append([fault, when, f"{statistics.median(listening):.2f}", *["never"] * 7])
            continue

        def med(key: str, data: list[dict[str, float]] = figures) -> str:
            values = [f[key] for f in data]
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        rows.append(
            [
                fault,
                f"{failed}/{runs}",
                med("listening") if fault == "kill" else "-",
                med("audio"),
                med("after listening") if fault == "kill" else "-",
                med("C heard"),
                med("C final"),
                f"{med('C late')} vs {med('A late')}",
                med("lost"),
                med("replayed"),
            ]
        )
    print()
    print(f"machine: {machine()}; retries: {options}; audio held while reconnecting: {backlog}")
    print("seconds, median (min-max); every time from the fault unless said")
    print(
        table(
            [
                "fault",
                "gave up",
                "server listens",
                "STT gets audio again",
                "…after it listens",
                "C's first words",
                "C's final",
                "C late vs A late (after each began)",
                "audio lost at the fault",
                "audio replayed",
            ],
            rows,
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=["drop", "kill", "stall", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="the plugin's STT with the framework's retries, not stt_recovery's and stt_watchdog's",
    )
    args = parser.parse_args(argv)
    faults: list[dd.Fault] = ["drop", "kill"] if args.fault == "both" else [args.fault]
    if args.defaults:
        asyncio.run(bench(faults, args.runs, APIConnectOptions(), None))
    else:
        asyncio.run(bench(faults, args.runs, stt_connect_options(), MAX_BACKLOG_S))


if __name__ == "__main__":
    main()
