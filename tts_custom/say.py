"""Speak text through the plugin into a WAV file: no LiveKit room, no cloud keys.

    python -m tts_custom.say "Hello, I'm Avery." -o hello.wav
    echo "Read from standard input." | python -m tts_custom.say - -o out.wav

It streams the text exactly as the agent does (sentence by sentence over one WebSocket) to
the server in KNOWLITHIC_TTS_SERVER (default ws://localhost:8000, the self-hosted server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from livekit.agents import APIConnectOptions, APIError

from .knowlithictts import BASE_URL_ENV_VARS, DEFAULT_SAMPLE_RATE, DEFAULT_VOICE, TTS


@dataclass(frozen=True)
class Spoken:
    pcm: bytes
    sample_rate: int
    first_audio: float  # seconds from sending the text to the first audio
    total: float


async def speak(text: str, tts: TTS, *, timeout: float = 10.0) -> Spoken:
    """Stream ``text`` through ``tts`` and collect its audio."""
    started = time.perf_counter()
    first_audio = 0.0
    chunks: list[bytes] = []
    options = APIConnectOptions(max_retry=1, timeout=timeout)
    async with tts.stream(conn_options=options) as stream:
        stream.push_text(text)
        stream.end_input()
        async for ev in stream:
            if not chunks:
                first_audio = time.perf_counter() - started
            chunks.append(ev.frame.data.tobytes())
    return Spoken(b"".join(chunks), tts.sample_rate, first_audio, time.perf_counter() - started)


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tts_custom.say",
        description="Speak text through the Knowlithic TTS plugin into a WAV file.",
    )
    parser.add_argument("text", help='the text to speak, or "-" to read standard input')
    parser.add_argument("-o", "--output", type=Path, default=Path("speech.wav"))
    parser.add_argument(
        "--url",
        default=None,
        help=f"server URL (default: {' or '.join(BASE_URL_ENV_VARS)}, else ws://localhost:8000)",
    )
    parser.add_argument("--voice", default=os.environ.get("KNOWLITHIC_VOICE") or DEFAULT_VOICE)
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE)
    parser.add_argument(
        "--format", choices=["wav", "pcm"], default="wav", help="audio format on the wire"
    )
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        print("nothing to say: the text is empty", file=sys.stderr)
        return 2
    url = args.url or next(
        (v for name in BASE_URL_ENV_VARS if (v := os.environ.get(name))), "ws://localhost:8000"
    )
    try:
        tts = TTS(
            base_url=url,
            voice=args.voice,
            sample_rate=args.sample_rate,
            output_format=args.format,
            word_timestamps=False,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        spoken = await speak(text, tts)
    except APIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        await tts.aclose()
    write_wav(args.output, spoken.pcm, spoken.sample_rate)
    seconds = len(spoken.pcm) / 2 / spoken.sample_rate
    print(
        f"wrote {args.output}: {seconds:.2f} s of audio at {spoken.sample_rate} Hz; "
        f"first audio after {spoken.first_audio * 1000:.0f} ms, done in {spoken.total:.2f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(_main(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
