"""Benchmark 3: CPU per second of audio, and memory per stream, at 1, 10 and 100 streams.

    python -m bench.cost_at_scale               # 1, 10, 100 concurrent streams, 5 rounds each
    python -m bench.cost_at_scale --rounds 1 --min-audio 0   # a quick look

One plugin instance (one socket) reads 24 kHz audio from the stamped-audio server, which runs
in its own process so its work is not counted.  Each stream speaks a four-sentence reply (one
request per sentence, 0.4 s of audio each); all streams of a round run at once.  CPU time is
this process's (plugin, LiveKit's AudioEmitter, the event loop and aiohttp), divided by the
seconds of audio delivered.  Beside it, the same audio read by the least a plugin on LiveKit's
framework can do (bench/minimal_plugin.py: the framework's own cost), and by a bare aiohttp
client (the floor for any client in Python).  Memory per stream is the peak of the Python
heap during a round over the number of streams (a separate pass: tracemalloc costs CPU).

Target: under 2 ms of CPU per second of 24 kHz audio, so one core carries hundreds of
real-time streams.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import aiohttp

import knowlithic_protocol as protocol
from bench.common import machine, plot_path, prewarmed, table
from bench.minimal_plugin import MinimalTTS
from bench.stamp_server import stamp_server
from tts_custom.knowlithictts import TTS

RATE = 24000
REPLY = (
    "Thanks for calling the clinic.",
    "Your results came back this morning.",
    "Everything looks normal.",
    "Is there anything else I can help with?",
)
CHUNKS, CHUNK_MS = 10, 40
AUDIO_PER_REQUEST = CHUNKS * CHUNK_MS / 1000


@dataclass
class Point:
    streams: int
    audio_s: float
    plugin_cpu_ms_per_s: float
    minimal_cpu_ms_per_s: float
    bare_cpu_ms_per_s: float
    kib_per_stream: float


async def plugin_round(tts: TTS | MinimalTTS, streams: int) -> float:
    """Speak the reply on ``streams`` streams at once; return the seconds of audio."""

    async def one() -> int:
        samples = 0
        async with tts.stream() as stream:
            stream.push_text(" ".join(REPLY))
            stream.end_input()
            async for ev in stream:
                samples += ev.frame.samples_per_channel
        return samples

    counts = await asyncio.gather(*(one() for _ in range(streams)))
    return sum(counts) / RATE


async def bare_round(ws: aiohttp.ClientWebSocketResponse, streams: int, round_: int) -> float:
    received = 0
    for sentence in range(len(REPLY)):
        for n in range(streams):
            request = protocol.TextToSpeech(f"b{round_}-{n}-{sentence}", "x", "elise", RATE, "pcm")
            await ws.send_str(protocol.encode_client_message(request))
    pending = streams * len(REPLY)
    while pending:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY:
            received += len(msg.data)
        else:
            pending -= 1
    return received / 2 / RATE  # headers included: a hair generous to the bare client


async def measure(url: str, streams: int, rounds: int) -> Point:
    tts = TTS(base_url=url, sample_rate=RATE, output_format="pcm", word_timestamps=False)
    await prewarmed(tts)
    await plugin_round(tts, streams)  # warm-up
    cpu, audio = time.process_time(), 0.0
    for _ in range(rounds):
        audio += await plugin_round(tts, streams)
    plugin_cpu = (time.process_time() - cpu) * 1000 / audio

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    await plugin_round(tts, streams)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    await tts.aclose()

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=(protocol.SUBPROTOCOL,)) as ws,
    ):
        await ws.receive()  # capabilities
        minimal = MinimalTTS(ws, sample_rate=RATE)
        await plugin_round(minimal, streams)
        cpu, minimal_audio = time.process_time(), 0.0
        for _ in range(rounds):
            minimal_audio += await plugin_round(minimal, streams)
        minimal_cpu = (time.process_time() - cpu) * 1000 / minimal_audio
        await minimal.aclose()

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=(protocol.SUBPROTOCOL,)) as ws,
    ):
        await ws.receive()
        await bare_round(ws, streams, -1)
        cpu, bare_audio = time.process_time(), 0.0
        for r in range(rounds):
            bare_audio += await bare_round(ws, streams, r)
        bare_cpu = (time.process_time() - cpu) * 1000 / bare_audio
    kib = (peak - base) / streams / 1024
    return Point(streams, audio, plugin_cpu, minimal_cpu, bare_cpu, kib)


async def run(stream_counts: list[int], rounds: int, min_audio: float) -> list[Point]:
    args = ["--chunks", str(CHUNKS), "--chunk-ms", str(CHUNK_MS), "--gap-ms", "0"]
    per_round = len(REPLY) * AUDIO_PER_REQUEST
    async with stamp_server(*args) as (url, _log):
        # few streams deliver little audio per round: more rounds, for a steady figure
        return [
            await measure(url, n, max(rounds, math.ceil(min_audio / (n * per_round))))
            for n in stream_counts
        ]


def report(points: list[Point]) -> str:
    rows = [
        [
            p.streams,
            p.audio_s,
            p.plugin_cpu_ms_per_s,
            p.minimal_cpu_ms_per_s,
            p.bare_cpu_ms_per_s,
            p.kib_per_stream,
        ]
        for p in points
    ]
    headers = [
        "concurrent streams",
        "audio s",
        "plugin CPU ms per audio s",
        "minimal plugin CPU ms per audio s",
        "bare client CPU ms per audio s",
        "KiB per stream",
    ]
    return f"24 kHz, 40 ms messages, loopback; {machine()}\n" + table(headers, rows)


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cpu_ax, mem_ax) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [str(p.streams) for p in points]
    cpu_ax.plot(xs, [p.plugin_cpu_ms_per_s for p in points], "o-", label="plugin + framework")
    cpu_ax.plot(
        xs, [p.minimal_cpu_ms_per_s for p in points], "o-", label="minimal plugin + framework"
    )
    cpu_ax.plot(xs, [p.bare_cpu_ms_per_s for p in points], "o-", label="bare aiohttp client")
    cpu_ax.axhline(2.0, color="black", linestyle="--", label="target (2 ms)")
    cpu_ax.set_title("CPU per second of 24 kHz audio")
    cpu_ax.set_xlabel("concurrent streams")
    cpu_ax.set_ylabel("ms of CPU")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.legend()
    mem_ax.bar(xs, [p.kib_per_stream for p in points])
    mem_ax.set_title("Python heap per concurrent stream (peak)")
    mem_ax.set_xlabel("concurrent streams")
    mem_ax.set_ylabel("KiB")
    for ax in (cpu_ax, mem_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None, *, out_dir: Path | None = None) -> None:
    parser = argparse.ArgumentParser(description="plugin CPU and memory at scale")
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 10, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-audio", type=float, default=60.0, help="seconds per point")
    args = parser.parse_args(argv)
    points = asyncio.run(run(args.streams, args.rounds, args.min_audio))
    print(report(points))
    path = plot_path("cost_at_scale", out_dir)
    plot(points, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
