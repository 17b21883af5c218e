"""Measure the word error rate of the server's speech over many runs (for docs/server.md).

    python -m tests.server.measure_wer --runs 15

Starts the server in-process on an ephemeral port, synthesizes the intelligibility test's
sentences at 16 kHz ``--runs`` times (Piper's output varies from run to run) and prints the
corpus WER of each run as pocketsphinx hears it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import aiohttp
from aiohttp.test_utils import TestServer

import knowlithic_protocol as protocol
from tts_server.app import create_app

from .asr import ASR_SAMPLE_RATE, transcribe, word_error_rate
from .helpers import BASE_CONFIG, Client
from .test_audio_quality import SENTENCES, WER_THRESHOLD


async def main(runs: int) -> None:
    server = TestServer(create_app(BASE_CONFIG), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(str(server.make_url("/")), protocols=(protocol.SUBPROTOCOL,))
            client = Client(ws, tagged=True)
            await client.receive()
            rates = []
            for run in range(runs):
                pcms = [
                    (await client.run(s, request_id=f"{run}-{i}", sample_rate=ASR_SAMPLE_RATE)).data
                    for i, s in enumerate(SENTENCES)
                ]
                rates.append(word_error_rate(SENTENCES, [transcribe(p) for p in pcms]))
                print(f"run {run + 1}: WER {rates[-1]:.3f}", flush=True)
            await ws.close()
    finally:
        await server.close()
    print(
        f"{runs} runs of {len(SENTENCES)} sentences: WER mean {statistics.mean(rates):.3f}, "
        f"min {min(rates):.3f}, max {max(rates):.3f} (test threshold {WER_THRESHOLD})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    asyncio.run(main(parser.parse_args().runs))
