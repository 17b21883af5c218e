"""Opus against PCM on the wire: bytes, first audio, a constrained link, intelligibility.

    python -m bench.opus_link                   # everything, about eight minutes
    python -m bench.opus_link --part open       # the open link and intelligibility only
    python -m bench.opus_link --texts 4 --rounds 1 --bitrates 24000   # a quick look

Against the real local server (``python -m tts_server`` with Piper, deterministic voice):

1. **Open link** (loopback, a bare protocol client): per format and rate, the bytes on the
   wire per second of audio (every audio frame, headers included) and the first audio (from
   sending the request to its first audio frame), requests alternating between formats.
2. **Intelligibility**: every text rendered as PCM and as Opus at several bit rates (the
   request's ``bitrate``), decoded, transcribed by pocketsphinx; the word error rate of each
   against the text, and the difference from PCM's.
3. **Constrained link**: a delaying proxy (50 ms round trip) that caps bandwidth, shared by
   concurrent replies, each a plugin ``TTS`` with its own socket as each call has; per
   reply, the first audio (what the caller waits for) and the underruns of a player that
   starts at the first frame and plays in real time.

CPU and bytes per bit rate, without a server: ``python -m bench.opus_codec``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import soxr

import knowlithic_protocol as protocol
from bench.common import (
    Player,
    delay_proxy_process,
    local_tts_server,
    machine,
    percentiles,
    table,
)
from knowlithic_protocol import formats
from tests.server.asr import ASR_SAMPLE_RATE, transcribe, word_error_rate
from tts_custom.knowlithictts import TTS

TEXTS = (
    "Sure, I can help you with that booking right away.",
    "The table is for two people at seven thirty tonight.",
    "Please hold on while I check the calendar for next week.",
    "Your order number is four five six, and it ships on Monday.",
    "We are open from nine in the morning until six in the evening.",
    "I am sorry, but that room is not available on Friday.",
    "Could you spell your last name for me, please?",
    "The weather tomorrow looks sunny with a light breeze.",
    "Thank you for calling, and have a wonderful day.",
    "I have moved your appointment to Thursday at ten.",
    "The doctor will see you in about fifteen minutes.",
    "Would you like me to send a confirmation by email?",
    "The train to Boston leaves from platform three at noon.",
    "Your package was delivered to the front desk this morning.",
    "I can offer you a window seat or an aisle seat.",
    "The total comes to forty two dollars and fifty cents.",
    "Let me transfer you to someone in the billing department.",
    "Please remember to bring your passport to the airport.",
    "The museum is closed on Mondays but open every other day.",
    "We will call you back as soon as the repair is finished.",
    "The pharmacy is on the corner next to the bank.",
    "Your password must have at least eight characters.",
    "The meeting has been moved to the large conference room.",
    "Is there anything else I can help you with today?",
)
REPLY = " ".join(TEXTS[:3])  # a three-sentence reply for the constrained link
RATES = (16000, 24000)
BITRATES = (12000, 16000, 20000, 24000, 32000)
VOICE = "joe"


@dataclass
class Rendered:
    pcm: bytes  # decoded, at the request's rate
    rate: int
    wire_bytes: int
    first_audio: float  # seconds


async def render(
    ws: aiohttp.ClientWebSocketResponse,
    request_id: str,
    text: str,
    *,
    rate: int,
    fmt: protocol.OutputFormat,
    bitrate: int | None = None,
) -> Rendered:
    """One request over a bare protocol client, its audio decoded as the plugin would."""
    msg = protocol.TextToSpeech(request_id, text, VOICE, rate, fmt, bitrate=bitrate)
    decoder = formats.new_decoder(fmt, sample_rate=rate)
    sent = time.perf_counter()
    await ws.send_str(protocol.encode_client_message(msg))
    first, wire, pcm, out_rate = 0.0, 0, bytearray(), rate
    while True:
        frame = await ws.receive()
        data = frame.data
        if not isinstance(data, str | bytes):
            raise RuntimeError(f"the socket closed: {frame.type}")
        event = protocol.decode_server_message(data, tagged_binary=True)
        if isinstance(event, protocol.Audio):
            if not first:
                first = time.perf_counter() - sent
            wire += len(data)
            chunk = decoder.feed(event.data, sample_rate=event.sample_rate)
            if chunk is not None:
                pcm += chunk.pcm
                out_rate = chunk.sample_rate
        elif isinstance(event, protocol.Complete):
            if (tail := decoder.finish()) is not None:
                pcm += tail.pcm
            return Rendered(bytes(pcm), out_rate, wire, first)
        elif isinstance(event, protocol.Error):
            raise RuntimeError(f"{event.code}: {event.message}")


def seconds(rendered: Rendered) -> float:
    return len(rendered.pcm) / 2 / rendered.rate


def to_asr_rate(pcm: bytes, rate: int) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    resampled = soxr.resample(samples, rate, ASR_SAMPLE_RATE)
    return bytes((np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes())


# -- 1 and 2: open link, intelligibility -------------------------------------------------------


@dataclass
class OpenLinkRow:
    format: str
    rate: int
    bitrate: int | None
    kbit_per_s: float
    first_audio_p50_ms: float
    first_audio_p95_ms: float
    wer: float


async def open_link(
    url: str, texts: Sequence[str], rounds: int, bitrates: Sequence[int]
) -> list[OpenLinkRow]:
    variants: list[tuple[protocol.OutputFormat, int | None]] = [("pcm", None)]
    variants += [("opus", b) for b in bitrates]
    rows = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=(protocol.SUBPROTOCOL,)) as ws,
    ):
        await ws.receive()  # capabilities
        for text in texts[:2]:  # warm the voice and the codec up
            await render(ws, "warm", text, rate=24000, fmt="opus")
        for rate in RATES:
            results: dict[tuple[protocol.OutputFormat, int | None], list[Rendered]] = {
                v: [] for v in variants
            }
            hypotheses: dict[tuple[protocol.OutputFormat, int | None], list[str]] = {
                v: [] for v in variants
            }
            n = 0
            for _ in range(rounds):
                for text in texts:
                    for fmt, bitrate in variants:  # alternating: drift hits every variant alike
                        n += 1
                        got = await render(ws, f"r{n}", text, rate=rate, fmt=fmt, bitrate=bitrate)
                        results[fmt, bitrate].append(got)
                        if len(hypotheses[fmt, bitrate]) < len(texts):
                            hypotheses[fmt, bitrate].append(
                                transcribe(to_asr_rate(got.pcm, got.rate))
                            )
            for (fmt, bitrate), got_all in results.items():
                audio = sum(seconds(g) for g in got_all)
                first = percentiles([g.first_audio * 1000 for g in got_all], (50, 95))
                rows.append(
                    OpenLinkRow(
                        format=fmt,
                        rate=rate,
                        bitrate=bitrate,
                        kbit_per_s=sum(g.wire_bytes for g in got_all) * 8 / audio / 1000,
                        first_audio_p50_ms=first[0],
                        first_audio_p95_ms=first[1],
                        wer=word_error_rate(list(texts), hypotheses[fmt, bitrate]),
                    )
                )
    return rows


# -- 3: constrained link -----------------------------------------------------------------------


@dataclass
class Playback:
    first_audio: float  # seconds
    underruns: int  # times the player ran dry after it started
    starved: float  # seconds it spent dry


async def play_reply(tts: TTS, text: str) -> Playback:
    """Speak ``text``; a player starts at the first frame and plays in real time."""
    started = time.perf_counter()
    first = 0.0
    player = Player()
    async with tts.stream() as stream:
        stream.push_text(text)
        stream.end_input()
        async for event in stream:
            now = time.perf_counter()
            first = first or now - started
            player.hear(now, event.frame.samples_per_channel / event.frame.sample_rate)
    return Playback(first, player.underruns, player.starved)


@dataclass
class ConstrainedRow:
    format: str
    replies: int
    first_audio_p50_ms: float
    first_audio_p95_ms: float
    replies_with_underruns: int
    starved_s_per_reply: float
    errors: int


async def constrained_link(
    server_port: int, *, replies: int, rounds: int, bandwidth: float, rtt: float
) -> list[ConstrainedRow]:
    rows = []
    async with delay_proxy_process(server_port, rtt, bandwidth=bandwidth) as port:
        url = f"ws://127.0.0.1:{port}"
        compared: tuple[protocol.OutputFormat, ...] = ("pcm", "opus")
        for fmt in compared:
            ttses = [
                TTS(base_url=url, voice=VOICE, sample_rate=24000, output_format=fmt)
                for _ in range(replies)
            ]
            outcomes: list[Playback] = []
            errors = 0
            try:
                for tts in ttses:
                    tts.prewarm()
                await asyncio.sleep(1.0)  # every socket open before the replies start
                for _ in range(rounds):
                    got = await asyncio.gather(
                        *(play_reply(t, REPLY) for t in ttses), return_exceptions=True
                    )
                    outcomes += [g for g in got if isinstance(g, Playback)]
                    errors += sum(isinstance(g, BaseException) for g in got)
                    await asyncio.sleep(1.0)  # the link drains between rounds
            finally:
                for tts in ttses:
                    await tts.aclose()
            first = percentiles([o.first_audio * 1000 for o in outcomes], (50, 95))
            rows.append(
                ConstrainedRow(
                    format=fmt,
                    replies=len(outcomes),
                    first_audio_p50_ms=first[0],
                    first_audio_p95_ms=first[1],
                    replies_with_underruns=sum(o.underruns > 0 for o in outcomes),
                    starved_s_per_reply=(
                        sum(o.starved for o in outcomes) / len(outcomes) if outcomes else 0.0
                    ),
                    errors=errors,
                )
            )
    return rows


@dataclass
class Report:
    machine: str
    open_link: list[OpenLinkRow] = field(default_factory=list)
    constrained: list[ConstrainedRow] = field(default_factory=list)
    bandwidth: float = 0.0
    rtt: float = 0.0
    replies: int = 0


async def run(args: argparse.Namespace) -> Report:
    texts = TEXTS[: args.texts]
    report = Report(machine(), bandwidth=args.bandwidth, rtt=args.rtt, replies=args.replies)
    # no reply limit: the link, not the server's admission, is what is measured
    server_args = (
        "--noise-scale",
        "0",
        "--noise-w",
        "0",
        "--max-streams",
        "0",
        "--first-audio-target",
        "0",
    )
    async with local_tts_server(*server_args) as url:
        if args.part in ("all", "open"):
            report.open_link = await open_link(url, texts, args.rounds, args.bitrates)
        if args.part == "open":
            return report
        port = int(url.rsplit(":", 1)[1])
        report.constrained = await constrained_link(
            port,
            replies=args.replies,
            rounds=args.rounds,
            bandwidth=args.bandwidth,
            rtt=args.rtt,
        )
    return report


def show(report: Report) -> None:
    print(f"machine: {report.machine}")
    pcm_wer = {r.rate: r.wer for r in report.open_link if r.format == "pcm"}
    show_open_link(report, pcm_wer)
    show_constrained(report)


def show_open_link(report: Report, pcm_wer: dict[int, float]) -> None:
    if not report.open_link:
        return
    print("\nOpen link (loopback): wire bytes, first audio, word error rate")
    print(
        table(
            [
                "format",
                "rate",
                "bitrate",
                "kbit/s",
                "first p50 ms",
                "first p95 ms",
                "WER",
                "vs PCM",
            ],
            [
                [
                    r.format,
                    r.rate,
                    r.bitrate or "-",
                    r.kbit_per_s,
                    r.first_audio_p50_ms,
                    r.first_audio_p95_ms,
                    r.wer,
                    f"{r.wer - pcm_wer[r.rate]:+.3f}",
                ]
                for r in report.open_link
            ],
        )
    )


def show_constrained(report: Report) -> None:
    if not report.constrained:
        return
    print(
        f"\nConstrained link: {report.bandwidth / 1e6:g} Mbit/s shared, "
        f"{report.rtt * 1000:.0f} ms round trip, {report.replies} concurrent replies at 24 kHz"
    )
    print(
        table(
            [
                "format",
                "replies",
                "first p50 ms",
                "first p95 ms",
                "with underruns",
                "starved s",
                "errors",
            ],
            [
                [
                    r.format,
                    r.replies,
                    r.first_audio_p50_ms,
                    r.first_audio_p95_ms,
                    r.replies_with_underruns,
                    r.starved_s_per_reply,
                    r.errors,
                ]
                for r in report.constrained
            ],
        )
    )


def main(argv: Sequence[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m bench.opus_link", description=__doc__)
    parser.add_argument(
        "--part",
        choices=("all", "open", "constrained"),
        default="all",
        help="the open link and intelligibility, or the constrained link, or both",
    )
    parser.add_argument("--texts", type=int, default=len(TEXTS), help="sentences (default all)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each (default 2)")
    parser.add_argument("--bitrates", type=int, nargs="+", default=list(BITRATES))
    parser.add_argument("--replies", type=int, default=10, help="concurrent replies (default 10)")
    parser.add_argument("--bandwidth", type=float, default=1e6, help="bit/s (default 1 Mbit/s)")
    parser.add_argument("--rtt", type=float, default=0.05, help="seconds (default 0.05)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    show(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return report


if __name__ == "__main__":
    main()
