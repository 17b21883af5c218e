"""Memory and CPU of one plugin instance under sustained concurrent load.

    python -m bench.plugin_load                  # 100 streams at once, 10 rounds
    python -m bench.plugin_load --streams 10 --rounds 5

Each round speaks one two-sentence reply on every stream at once, through one ``TTS`` instance
(one socket) to the in-process test server on loopback, which answers at once.  Reported per
round: wall time, CPU time, audio delivered, and memory: the Python heap traced by
tracemalloc and the process's resident set.  Growth from the second round to the last is
what the plugin keeps and never gives back; the peak during a round, over the number of
streams, is the cost of one concurrent stream.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import time
import tracemalloc
from dataclasses import dataclass

from tests.fake_knowlithic import FakeKnowlithicServer, Received, speech_for
from tests.plugin_helpers import speak  # it sets aside the framework's 10 ms end marker
from tts_custom.knowlithictts import TTS


@dataclass
class Round:
    wall: float
    cpu: float
    audio: float
    heap_mb: float
    peak_mb: float
    rss_mb: float


def reply(n: int, round_: int) -> tuple[str, str]:
    return (f"Caller {n} asks about visit {round_}.", f"The answer is day {n % 28 + 1}.")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def one_round(server: FakeKnowlithicServer, tts: TTS, streams: int, index: int) -> Round:
    server.received = Received()  # the test server's own log of requests is not the plugin's
    gc.collect()
    tracemalloc.reset_peak()
    wall, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(speak(tts, " ".join(reply(n, index))) for n in range(streams)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for n, spoken in enumerate(results):
        expected = b"".join(speech_for(sentence, 16000) for sentence in reply(n, index))
        assert spoken.pcm == expected, "audio mixed or lost"
    audio = sum(len(r.pcm) for r in results) / 2 / 16000
    del results
    gc.collect()
    heap, peak = tracemalloc.get_traced_memory()
    return Round(wall, cpu, audio, heap / 2**20, peak / 2**20, rss_mb())


async def run(streams: int, rounds: int) -> list[Round]:
    server = FakeKnowlithicServer()
    await server.start()
    server.behavior.chunk_bytes = 1280  # 40 ms messages, as the local server sends
    tts = TTS(base_url=server.url)
    tracemalloc.start()
    try:
        return [await one_round(server, tts, streams, i) for i in range(rounds)]
    finally:
        tracemalloc.stop()
        await tts.aclose()
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="plugin memory and CPU under sustained load")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.streams, args.rounds))
    print(f"{args.streams} concurrent streams, one TTS instance, loopback test server")
    print("round  wall s  cpu s  audio s  heap MB  peak MB  rss MB")
    for i, r in enumerate(results, 1):
        print(
            f"{i:5d}  {r.wall:6.2f}  {r.cpu:5.2f}  {r.audio:7.1f}  {r.heap_mb:7.2f}"
            f"  {r.peak_mb:7.2f}  {r.rss_mb:6.1f}"
        )
    first, last = results[min(1, len(results) - 1)], results[-1]
    per_stream = max(r.peak_mb - r.heap_mb for r in results) / args.streams * 1024
    print(
        f"heap growth from round 2 to {len(results)}: {last.heap_mb - first.heap_mb:+.2f} MB; "
        f"rss growth: {last.rss_mb - first.rss_mb:+.1f} MB; "
        f"peak per concurrent stream: {per_stream:.0f} KiB (with tracemalloc on)"
    )


if __name__ == "__main__":
    main()
