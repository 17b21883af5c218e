"""What a fault on one TTS server costs the caller when the plugin has another to go to.

    python -m bench.failover                 # 5 rounds of each case, about two minutes
    python -m bench.failover --rounds 10

Two real servers (``python -m tts_server``, deterministic voice), each a process of its own
on this machine; one plugin ``TTS`` with both in ``base_url``, the preferred one first, as
``KNOWLITHIC_TTS_SERVER=ws://a,ws://b`` gives the worker.  Per case and round:

* **first audio** of a short reply, from pushing its text to its first frame: with both
  servers up (the baseline); with the preferred one SIGKILLed just before the turn (its
  socket was open and warm: the plugin finds it dead and moves); with the preferred one full
  (``--max-streams 1``, its only place held by another agent's reply: it answers ``busy``).
* **a kill mid-reply**: the preferred server SIGKILLed just after a long reply's first audio
  arrived (the worst moment: a reply arrives much faster than it plays, so later most of it
  has arrived already), the reply moving to the second server; beside it the same kill with
  one server that a supervisor restarts (what a single-server deployment gets).  Measured:
  the silence a real-time listener hears (its player running dry), and the time from the
  kill to the first audio of the new rendition.

Each killed server is started again between rounds and the pool is given a fresh ``TTS`` so
every round starts from the same state.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.common import Player, machine, percentiles, table
from tests.plugin_helpers import LONG_REPLY, SHORT, WORKER
from tests.server_process import DETERMINISTIC, ServerProcess
from tts_custom.knowlithictts import TTS

KILL_AFTER = 0.1  # seconds of audio received before the kill: the server owes the rest
RESUME_PAUSE = 0.03  # a pause in arrivals this long after the kill: the new rendition
BYTES_PER_SECOND = 2 * 16000


@dataclass
class Case:
    name: str
    values: list[float] = field(default_factory=list)


async def first_audio(tts: TTS, text: str = SHORT) -> float:
    started = time.perf_counter()
    first = 0.0
    async with tts.stream(conn_options=WORKER) as stream:
        stream.push_text(text)
        stream.end_input()
        async for _ in stream:
            first = first or time.perf_counter() - started
    return first


@dataclass
class AfterKill:
    silence: float  # seconds a real-time listener heard nothing
    resumed: float  # seconds from the kill to the first audio of the new rendition


async def kill_mid_reply(tts: TTS, victim: ServerProcess, restart: bool) -> AfterKill:
    """Kill the server speaking a long reply just after its first audio arrived, while it
    still owes most of the reply (later, most of a reply has already arrived: it arrives much
    faster than it plays); the reply moves to the other server, or waits for the restart."""
    player = Player()
    received = 0
    killed_at = resumed = last = 0.0
    fault: asyncio.Task[object] | None = None
    async with tts.stream(conn_options=WORKER) as stream:
        stream.push_text(LONG_REPLY)
        stream.end_input()
        async for event in stream:
            now = time.perf_counter()
            frame = event.frame
            player.hear(now, frame.samples_per_channel / frame.sample_rate)
            # the audio already decoded drains at once; the new rendition comes after a pause
            if killed_at and not resumed and now - last > RESUME_PAUSE:
                resumed = now - killed_at
            last = now
            received += frame.samples_per_channel * 2
            if fault is None and received >= KILL_AFTER * BYTES_PER_SECOND:
                killed_at = time.perf_counter()
                fault = asyncio.ensure_future(victim.restart() if restart else victim.kill())
    if fault is not None:
        await fault
    return AfterKill(player.starved, resumed)


async def one_round(cases: dict[str, Case], a: ServerProcess, b: ServerProcess) -> None:
    both = f"{a.url},{b.url}"

    async def with_pool(run: Callable[[TTS], Awaitable[float]], name: str) -> None:
        tts = TTS(base_url=both)
        try:
            tts.prewarm()  # as the worker does: the preferred server's socket and the next's
            await first_audio(tts)
            cases[name].values.append(await run(tts))
        finally:
            await tts.aclose()

    await with_pool(first_audio, "first audio, both up")

    async def after_death(tts: TTS) -> float:
        await a.kill()
        return await first_audio(tts)

    await with_pool(after_death, "first audio, preferred just died")
    await a.start()

    async def mid_reply(tts: TTS) -> float:
        after = await kill_mid_reply(tts, a, restart=False)
        cases["resumed after, preferred killed mid-reply"].values.append(after.resumed)
        return after.silence

    await with_pool(mid_reply, "silence, preferred killed mid-reply")
    await a.start()

    alone = TTS(base_url=a.url)
    try:
        await first_audio(alone)
        after = await kill_mid_reply(alone, a, restart=True)
        cases["silence, one server restarted"].values.append(after.silence)
        cases["resumed after, one server restarted"].values.append(after.resumed)
    finally:
        await alone.aclose()


async def busy_round(cases: dict[str, Case], full: ServerProcess, b: ServerProcess) -> None:
    occupant = TTS(base_url=full.url)
    tts = TTS(base_url=f"{full.url},{b.url}")
    try:
        tts.prewarm()
        await first_audio(tts)
        await asyncio.sleep(2.5)  # until its audio would have played: the place is free
        holding = asyncio.ensure_future(first_audio(occupant, LONG_REPLY))
        await asyncio.sleep(0.5)
        cases["first audio, preferred full"].values.append(await first_audio(tts))
        await holding
    finally:
        await occupant.aclose()
        await tts.aclose()
    await asyncio.sleep(2.5)  # the full server's idle window: its place is free again


async def run(rounds: int) -> None:
    names = (
        "first audio, both up",
        "first audio, preferred just died",
        "first audio, preferred full",
        "silence, preferred killed mid-reply",
        "silence, one server restarted",
        "resumed after, preferred killed mid-reply",
        "resumed after, one server restarted",
    )
    cases = {name: Case(name) for name in names}
    a, b = ServerProcess(*DETERMINISTIC), ServerProcess(*DETERMINISTIC)
    full = ServerProcess(*DETERMINISTIC, "--max-streams", "1")
    await asyncio.gather(a.start(), b.start(), full.start())
    try:
        for number in range(rounds):
            await one_round(cases, a, b)
            await busy_round(cases, full, b)
            print(f"round {number + 1}/{rounds} done", flush=True)
    finally:
        await asyncio.gather(a.stop(), b.stop(), full.stop())
    rows = []
    for case in cases.values():
        p50, p95 = percentiles(case.values, (50, 95))
        rows.append([case.name, len(case.values), f"{p50 * 1000:.0f}", f"{p95 * 1000:.0f}"])
    print(machine())
    print(table(["case", "n", "p50 ms", "p95 ms"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(run(args.rounds))


if __name__ == "__main__":
    main()
