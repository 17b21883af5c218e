"""Measure a running server from the client side: time to first audio and real-time factor.

    python -m tts_server.bench --url ws://localhost:8000 --runs 10 --concurrency 1

Each connection sends the same requests one after another; ``--concurrency`` connections run
at once.  Time to first audio is from sending the request to receiving its first audio
message; the real-time factor is the request's whole time divided by its audio's duration.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

import knowlithic_protocol as protocol

TEXTS = {
    "short": "Hello, how can I help you today?",
    "long": (
        "Thanks for calling the clinic, I can certainly help you move your appointment to a "
        "later time this week, and I will also send you a reminder by text message the day "
        "before, so that you do not have to remember it yourself."
    ),
}


@dataclass
class Sample:
    """One request seen from the client: seconds to first audio, seconds in all, audio length."""

    ttfa: float
    total: float
    audio_seconds: float


async def time_request(
    ws: aiohttp.ClientWebSocketResponse,
    text: str,
    request_id: str,
    rate: int,
    output_format: protocol.OutputFormat = "pcm",
) -> Sample:
    started = time.perf_counter()
    await ws.send_str(
        protocol.encode_client_message(
            protocol.TextToSpeech(request_id, text, "elise", rate, output_format)
        )
    )
    first: float | None = None
    size = 0
    while True:
        message = await ws.receive(timeout=60)
        msg = protocol.decode_server_message(message.data, tagged_binary=True)
        if isinstance(msg, protocol.Audio) and msg.request_id == request_id:
            first = first or time.perf_counter() - started
            size += len(msg.data)
        elif isinstance(msg, protocol.Error):
            raise RuntimeError(f"{msg.code}: {msg.message}")
        elif isinstance(msg, protocol.Complete) and msg.request_id == request_id:
            break
    assert first is not None
    return Sample(first, time.perf_counter() - started, size / 2 / rate)


async def _connection(
    url: str, headers: dict[str, str], runs: int, rate: int, index: int
) -> dict[str, list[Sample]]:
    results: dict[str, list[Sample]] = {name: [] for name in TEXTS}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=(protocol.SUBPROTOCOL,), headers=headers) as ws,
    ):
        await ws.receive(timeout=10)  # capabilities
        await time_request(ws, "Warm up.", f"warm-{index}", rate)
        for run in range(runs):
            for name, text in TEXTS.items():
                results[name].append(await time_request(ws, text, f"{index}-{run}-{name}", rate))
    return results


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tts_server.bench", description=__doc__)
    parser.add_argument("--url", default="ws://localhost:8000")
    parser.add_argument("--runs", type=int, default=10, help="requests per text per connection")
    parser.add_argument("--concurrency", type=int, default=1, help="connections at once")
    parser.add_argument("--sample-rate", type=int, default=24000)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    per_connection = await asyncio.gather(
        *(
            _connection(args.url, headers, args.runs, args.sample_rate, i)
            for i in range(args.concurrency)
        )
    )
    print(f"{args.concurrency} connection(s) x {args.runs} runs, {args.sample_rate} Hz pcm")
    print("text   audio   TTFA p50   TTFA p90   RTF p50   RTF p90")
    for name in TEXTS:
        samples = [s for result in per_connection for s in result[name]]
        ttfa = [s.ttfa * 1000 for s in samples]
        rtf = [s.total / s.audio_seconds for s in samples]
        print(
            f"{name:<6} {statistics.mean(s.audio_seconds for s in samples):5.2f} s "
            f"{_percentile(ttfa, 0.5):7.0f} ms {_percentile(ttfa, 0.9):7.0f} ms "
            f"{_percentile(rtf, 0.5):8.3f} {_percentile(rtf, 0.9):9.3f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
