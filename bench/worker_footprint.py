"""What one worker costs at rest, and what Silero VAD costs per second of a caller's audio.

    python -m bench.worker_footprint                       # ~30 s
    python -m bench.worker_footprint --vad-seconds 5 --settle 5

The figures behind the README's *Scaling* table and deploy/k8s's resource requests:

* **memory at rest**: the real ``python agent.py start``, registered with a stand-in LiveKit
  endpoint on loopback (tests/fake_livekit.py), left to load its idle job processes; then the
  resident (RSS) and unique (USS: what the process alone holds, what a call adds) memory of
  the worker and of every process under it, and their proportional share (PSS: shared pages
  split among the processes that map them, so the PSS column sums to the whole worker).
  Needs port 8081 (production mode's health port) free.
* **VAD CPU**: the agent's Silero VAD (``agent.load_vad`` with the default settings) fed
  48 kHz audio in 10 ms frames, as a room delivers it, as fast as it takes it; CPU time over
  seconds of audio.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from livekit import rtc

import agent
from bench.common import machine, table
from settings import load_settings
from tests.fake_livekit import FakeLiveKit, worker_env

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
ROOM_RATE = 48000


async def worker_memory(settle: float) -> list[tuple[str, float, float, float]]:
    """(process, RSS, PSS, USS in MiB) for the worker at rest and each process under it."""
    async with FakeLiveKit() as livekit:
        with tempfile.TemporaryDirectory() as home:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, str(REPO / "agent.py"), "start"),
                cwd=home,
                env=worker_env(livekit.url, Path(home)),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                await asyncio.wait_for(livekit.registered.wait(), 60)
                await asyncio.sleep(settle)  # the idle job processes load their models
                worker = psutil.Process(process.pid)
                rows: list[tuple[str, float, float, float]] = []
                for proc in [worker, *worker.children(recursive=True)]:
                    info = proc.memory_full_info()
                    rows.append(
                        (_label(proc, worker), info.rss / MIB, info.pss / MIB, info.uss / MIB)
                    )
            finally:
                process.send_signal(signal.SIGTERM)
                await process.wait()
    return rows


def _label(proc: psutil.Process, worker: psutil.Process) -> str:
    if proc.pid == worker.pid:
        return "worker (agent.py start)"
    return f"child process {proc.pid}"


async def vad_cpu(seconds: float) -> float:
    """CPU milliseconds the agent's VAD spends per second of 48 kHz audio."""
    # the agent's VAD settings at their defaults; the keys are checked, never used
    keys = {"DEEPGRAM_API_KEY": "unused", "GROQ_API_KEY": "unused"}
    vad = agent.load_vad(load_settings(keys, require_livekit=False))
    frame_samples = ROOM_RATE // 100
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(int(ROOM_RATE * seconds)) * 3000).astype(np.int16)
    stream = vad.stream()

    async def drain() -> None:
        async for _ in stream:
            pass

    draining = asyncio.create_task(drain())
    started = time.process_time()
    for start in range(0, len(audio) - frame_samples + 1, frame_samples):
        chunk = audio[start : start + frame_samples].tobytes()
        stream.push_frame(rtc.AudioFrame(chunk, ROOM_RATE, 1, frame_samples))
        await asyncio.sleep(0)  # let the VAD task run, as it would between a room's frames
    stream.end_input()
    await draining
    cpu = time.process_time() - started
    await stream.aclose()
    return cpu * 1000 / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a worker's memory at rest and VAD CPU")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after registering")
    parser.add_argument("--vad-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    rows = asyncio.run(worker_memory(args.settle))
    print(f"a worker at rest, {args.settle:g} s after registering; {machine()}")
    # PSS shares each page among the processes that map it: its sum is the whole worker
    total = ["all processes", "", sum(r[2] for r in rows), sum(r[3] for r in rows)]
    print(table(["process", "RSS MiB", "PSS MiB", "USS MiB"], [*map(list, rows), total]))
    vad = asyncio.run(vad_cpu(args.vad_seconds))
    print(f"Silero VAD: {vad:.1f} ms of CPU per second of 48 kHz audio")


if __name__ == "__main__":
    main()
