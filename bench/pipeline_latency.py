"""Benchmark 5: end of the user's turn to the first audio frame at the session's output.

    python -m bench.pipeline_latency                # 100 turns, ~1 min
    python -m bench.pipeline_latency --turns 5

An ``AgentSession`` with no room: its LLM is scripted and answers at once (tests/scripted_llm.py),
its TTS is this plugin talking to the real local server (``python -m tts_server``, Piper), and
its audio output records when the first frame of each reply arrives
(tests/audio_capture.py, playing each reply out at once so turns follow quickly).  A turn is
``session.generate_reply(user_input=...)``: what the framework does once it has decided the
user finished speaking.  What remains between that
call and the first frame is the framework, the plugin and the TTS server.

Beside it, the server's own time to first audio for the same first sentence, measured with a
bare protocol client on a persistent socket (the floor for any client), turn by turn in
alternation with the pipeline so that both see the same machine.  "Added" is the difference
of the two distributions at each percentile: at p50 it is what the framework and the plugin
cost; at the tail it also holds Piper's own jitter, which the two samples see differently.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from livekit.agents import Agent, AgentSession

import knowlithic_protocol as protocol
from bench.common import (
    local_tts_server,
    machine,
    percentiles,
    plot_cdf,
    plot_path,
    prewarmed,
    table,
)
from tests.audio_capture import CapturingAudioOutput
from tests.scripted_llm import ScriptedLLM
from tts_custom.knowlithictts import TTS
from tts_server.bench import time_request

REPLY = "I can help with that. Your next appointment is on Tuesday at ten in the morning."
FIRST_SENTENCE = "I can help with that."


@dataclass
class Result:
    pipeline_ms: list[float]
    server_ms: list[float]


async def run(turns: int) -> Result:
    """Alternate a pipeline turn and a bare request, so both see the same machine."""
    result = Result([], [])
    async with local_tts_server() as url:
        tts = TTS(base_url=url)
        output = CapturingAudioOutput(realtime=False)
        llm = ScriptedLLM([REPLY] * (turns + 1))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url, protocols=(protocol.SUBPROTOCOL,)) as ws,
            llm,
            AgentSession[None](
                llm=llm, tts=tts, vad=None, turn_handling={"turn_detection": None}
            ) as session,
        ):
            await ws.receive()  # capabilities
            session.output.audio = output
            await session.start(Agent(instructions="You are a nurse assistant."))
            await prewarmed(tts)
            for n in range(turns):
                # the plugin's own request: its rate and format (wav), the reply's first sentence
                floor = await time_request(ws, FIRST_SENTENCE, f"floor-{n}", 16000, "wav")
                result.server_ms.append(floor.ttfa * 1000)
                await asyncio.sleep(0.1)  # the server idle again
                started = time.perf_counter()
                await session.generate_reply(user_input="When is my next appointment?")
                result.pipeline_ms.append((output.segments[-1].started_at - started) * 1000)
                await asyncio.sleep(0.1)
        await tts.aclose()
    return result


def report(result: Result, turns: int) -> str:
    pipe, floor = percentiles(result.pipeline_ms), percentiles(result.server_ms)
    rows = [
        ["voice pipeline: reply requested -> first frame at the output", *pipe],
        ["TTS server alone: first sentence -> first audio (bare client)", *floor],
        ["added by framework + plugin", *(p - f for p, f in zip(pipe, floor, strict=True))],
    ]
    return (
        f"{turns} turns, scripted instant LLM, local Piper server (loopback); {machine()}\n"
        + table(["ms", "p50", "p95", "p99"], rows)
    )


def plot(result: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for values, label in (
        (result.server_ms, "TTS server alone (bare client)"),
        (result.pipeline_ms, "voice pipeline (framework + plugin + server)"),
    ):
        plot_cdf(ax, values, label)
    ax.set_title("end of the user's turn -> first audio frame")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("share of turns")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None, *, out_dir: Path | None = None) -> None:
    parser = argparse.ArgumentParser(description="voice pipeline latency without a room")
    parser.add_argument("--turns", type=int, default=100)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.turns))
    print(report(result, args.turns))
    path = plot_path("pipeline_latency", out_dir)
    plot(result, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
