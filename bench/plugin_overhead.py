"""Benchmark 1: what the plugin adds between the server's send and LiveKit's audio frame.

    python -m bench.plugin_overhead                 # 300 requests each way
    python -m bench.plugin_overhead --requests 20   # a quick look

The stamped-audio server (bench/stamp_server.py, a separate process) records the moment it
writes each audio message.  Two clients read the same stream over loopback, one after the
other: a bare aiohttp WebSocket client (the floor: socket + WebSocket framing), and the plugin
driven as the framework drives it (``tts.stream()``, frames read from the stream).

* first audio: from the server writing its first audio message to the bare client receiving
  it, or to the plugin yielding its first audio frame (what LiveKit plays);
* per chunk: for every later message, from its write to the bare client receiving it, or to
  the plugin handing its samples to LiveKit's ``AudioEmitter``.

The difference between the two is the plugin's overhead.  Target: under 1 ms at p50 and
under 3 ms at p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

import knowlithic_protocol as protocol
from bench.common import machine, percentiles, plot_cdf, plot_path, prewarmed, table
from bench.stamp_server import StampLog, stamp_server
from tts_custom import synthesis
from tts_custom.knowlithictts import TTS

_HEADER = struct.Struct(">H")


@dataclass
class Samples:
    first: list[float] = field(default_factory=list)  # ms
    chunk: list[float] = field(default_factory=list)  # ms


async def bare_client(url: str, requests: int) -> Samples:
    out = Samples()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=(protocol.SUBPROTOCOL,)) as ws,
    ):
        await ws.receive()  # capabilities
        for i in range(requests):
            request = protocol.TextToSpeech(f"bare-{i}", "Hello there.", "elise", 16000, "pcm")
            await ws.send_str(protocol.encode_client_message(request))
            while True:
                msg = await ws.receive()
                received = time.monotonic_ns()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    (size,) = _HEADER.unpack_from(msg.data)
                    header = json.loads(msg.data[2 : 2 + size])
                    delay = (received - header["sent_ns"]) / 1e6
                    (out.first if header["sequence"] == 0 else out.chunk).append(delay)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    break
    return out


async def plugin_client(url: str, requests: int, log: StampLog) -> Samples:
    pushes: list[int] = []
    firsts: list[int] = []
    original_push = synthesis.AudioSink._push

    def timed_push(self: synthesis.AudioSink, pcm: bytes) -> int:
        pushes.append(time.monotonic_ns())
        return original_push(self, pcm)

    synthesis.AudioSink._push = timed_push  # type: ignore[method-assign]
    tts = TTS(base_url=url, output_format="pcm", word_timestamps=False)
    try:
        await prewarmed(tts)
        per_stream: list[list[int]] = []
        for _ in range(requests):
            pushes.clear()
            first: int | None = None
            async with tts.stream() as stream:
                stream.push_text("Hello there.")
                stream.end_input()
                async for _ev in stream:
                    if first is None:
                        first = time.monotonic_ns()
            assert first is not None
            firsts.append(first)
            per_stream.append(list(pushes))
    finally:
        synthesis.AudioSink._push = original_push  # type: ignore[method-assign]
        await tts.aclose()
    await asyncio.sleep(0.2)  # let the last log lines arrive
    out = Samples()
    for request_id, first, pushed in zip(log.order[-requests:], firsts, per_stream, strict=True):
        sent = log.sent[request_id]
        out.first.append((first - sent[0]) / 1e6)
        out.chunk.extend((p - s) / 1e6 for p, s in zip(pushed[1:], sent[1:], strict=True))
    return out


async def run(requests: int) -> tuple[Samples, Samples]:
    async with stamp_server("--chunks", "10", "--chunk-ms", "40", "--gap-ms", "2") as (url, log):
        bare = await bare_client(url, requests)
        plugin = await plugin_client(url, requests, log)
    return bare, plugin


def report(bare: Samples, plugin: Samples, requests: int) -> str:
    rows = []
    for name, b, p in (
        ("first audio", bare.first, plugin.first),
        ("per chunk", bare.chunk, plugin.chunk),
    ):
        bp, pp = percentiles(b), percentiles(p)
        rows.append([name, *bp, *pp, pp[0] - bp[0], pp[1] - bp[1]])
    headers = [
        "ms",
        "bare p50",
        "bare p95",
        "bare p99",
        "plugin p50",
        "plugin p95",
        "plugin p99",
        "added p50",
        "added p95",
    ]
    return f"{requests} requests, 10 x 40 ms chunks each, loopback; {machine()}\n" + table(
        headers, rows
    )


def plot(bare: Samples, plugin: Samples, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, title, b, p in (
        (axes[0], "first audio", bare.first, plugin.first),
        (axes[1], "each later chunk", bare.chunk, plugin.chunk),
    ):
        for values, label in ((b, "bare aiohttp client"), (p, "plugin")):
            plot_cdf(ax, values, label)
        ax.set_title(f"server send -> audio available: {title}")
        ax.set_xlabel("milliseconds")
        ax.set_ylabel("share of messages")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None, *, out_dir: Path | None = None) -> None:
    parser = argparse.ArgumentParser(description="plugin overhead vs a bare client")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    bare, plugin = asyncio.run(run(args.requests))
    print(report(bare, plugin, args.requests))
    path = plot_path("plugin_overhead", out_dir)
    plot(bare, plugin, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
