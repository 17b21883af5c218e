"""Speak text through the plugin into a WAV file: no LiveKit room, no cloud keys.

    python -m tts_custom.say "Hello, I'm Avery." -o hello.wav
    echo "Read from standard input." | python -m tts_custom.say - -o out.wav
    python -m tts_custom.say "Hello." --format opus -o hello.ogg

It streams the text exactly as the agent does (sentence by sentence over one WebSocket) to
the server in KNOWLITHIC_TTS_SERVER (default ws://localhost:8000, the self-hosted server).
With ``--format opus`` it asks for the whole text in one request and writes the Ogg Opus
stream exactly as it arrived: what is on the wire, playable as a file.
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

import aiohttp
from livekit.agents import APIConnectOptions, APIError, APIStatusError

import knowlithic_protocol as protocol
from knowlithic_protocol import formats

from .errors import server_error
from .knowlithictts import (
    BASE_URL_ENV_VARS,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_VOICE,
    TTS,
    endpoint,
)
from .transport import ConnectionLost
from .ws_transport import connect


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


@dataclass(frozen=True)
class Received:
    payloads: bytes  # the audio payloads of one request, joined: an Ogg Opus file
    seconds: float
    sample_rate: int
    first_audio: float
    total: float


async def receive_stream(
    url: str,
    text: str,
    *,
    voice: str,
    sample_rate: int,
    output_format: protocol.OutputFormat,
    timeout: float = 10.0,
) -> Received:
    """Ask for ``text`` in one request and keep its audio payloads as they arrived (each
    checked by decoding it, so a corrupt stream is an error, not a broken file)."""
    ws_url, api_key = endpoint(url)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        conn = await connect(http, ws_url, api_key=api_key, timeout=timeout, heartbeat=None)
        try:
            caps = conn.capabilities
            if caps is None or output_format not in caps.output_formats:
                raise APIStatusError(
                    f"the server does not offer {output_format} audio",
                    status_code=400,
                    retryable=False,
                )
            channel = await conn.open_request("say")
            await channel.send(
                protocol.TextToSpeech("say", text, voice, sample_rate, output_format)
            )
            decoder = formats.new_decoder(output_format, sample_rate=sample_rate)
            payloads, samples, rate, first = bytearray(), 0, sample_rate, 0.0
            while True:
                event = await channel.receive(timeout)
                if isinstance(event, protocol.Audio):
                    first = first or time.perf_counter() - started
                    payloads += event.data
                    chunks = [decoder.feed(event.data, sample_rate=event.sample_rate)]
                elif isinstance(event, protocol.Complete):
                    chunks = [decoder.finish()]
                elif isinstance(event, protocol.Error):
                    raise server_error(event)
                elif isinstance(event, ConnectionLost):
                    raise conn.lost_error()
                else:
                    continue
                for chunk in chunks:
                    if chunk is not None:
                        samples += len(chunk.pcm) // (2 * chunk.num_channels)
                        rate = chunk.sample_rate
                if isinstance(event, protocol.Complete):
                    break
        finally:
            await conn.aclose()
    return Received(bytes(payloads), samples / rate, rate, first, time.perf_counter() - started)


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
        "--format",
        choices=protocol.OUTPUT_FORMATS,
        default="wav",
        help="audio format on the wire; with opus the output is the Ogg Opus stream as received",
    )
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        print("nothing to say: the text is empty", file=sys.stderr)
        return 2
    if (problem := _unwritable(args.output)) is not None:
        print(f"error: cannot write {args.output}: {problem}", file=sys.stderr)
        return 2
    url = args.url or next(
        (v for name in BASE_URL_ENV_VARS if (v := os.environ.get(name))), "ws://localhost:8000"
    )
    if args.format == "opus":
        return await _receive_opus(args, text, url)
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


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written, checked before any synthesis is spent on it."""
    folder = path.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if path.is_dir():
        return "it is a folder"
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "permission denied"
    return None


async def _receive_opus(args: argparse.Namespace, text: str, url: str) -> int:
    try:
        received = await receive_stream(
            url, text, voice=args.voice, sample_rate=args.sample_rate, output_format="opus"
        )
    except (APIError, formats.AudioFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.output.write_bytes(received.payloads)
    kbits = len(received.payloads) * 8 / received.seconds / 1000 if received.seconds else 0.0
    print(
        f"wrote {args.output}: {received.seconds:.2f} s of Ogg Opus audio at "
        f"{received.sample_rate} Hz ({len(received.payloads)} bytes, {kbits:.1f} kbit/s); "
        f"first audio after {received.first_audio * 1000:.0f} ms, done in {received.total:.2f} s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(_main(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
