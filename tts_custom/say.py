"""Speak text through the plugin into a WAV file: no LiveKit room, no cloud keys.

    python -m tts_custom.say "Hello, I'm Avery." -o hello.wav
    echo "Read from standard input." | python -m tts_custom.say - -o out.wav
    python -m tts_custom.say "Hello." --format opus -o hello.ogg
    python -m tts_custom.say "Hello." --url http://localhost:8000 --transport http

It streams the text exactly as the agent does (sentence by sentence over one WebSocket, or
with ``--transport http`` one POST per sentence) to the server in KNOWLITHIC_TTS_SERVER
(default ws://localhost:8000, the self-hosted server); a server that refuses the WebSocket
upgrade (a 200 page, 400, 404, 405, 426) is spoken to over HTTP, as the agent does.
With ``--format opus`` it asks for the whole text in one request and writes the Ogg Opus
stream exactly as it arrived: what is on the wire, playable as a file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
import wave
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO, TypeVar

import aiohttp
from livekit.agents import APIConnectOptions, APIError, APIStatusError, tokenize
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT

import knowlithic_protocol as protocol
from knowlithic_protocol import formats

from . import http_transport
from .errors import server_error
from .http_speech import DEFAULT_MODEL
from .knowlithictts import (
    BASE_URL_ENV_VARS,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_VOICE,
    NO_WEBSOCKET,
    TRANSPORTS,
    TTS,
    TransportName,
    endpoint,
)
from .transport import ConnectionLost, Transport
from .ws_transport import connect

T = TypeVar("T")
# A text of this many sentences or more shows its progress on stderr (on a terminal, one line
# rewritten in place; otherwise a line per sentence).  Shorter ones finish before anyone waits.
PROGRESS_MIN_SENTENCES: Final = 5


class Progress:
    """``sentence k/n, X s of audio so far`` on stderr as the audio arrives.

    The plugin marks each word in the audio (the word timings the agent's captions use), so
    the count of non-blank characters marked so far says which of the text's sentences (split
    by the plugin's own tokenizer) the audio has reached.
    """

    def __init__(self, text: str, out: TextIO) -> None:
        sentences = tokenize.blingfire.SentenceTokenizer().tokenize(text)
        self._ends: list[int] = []
        total = 0
        for sentence in sentences:
            total += _letters(sentence)
            self._ends.append(total)
        self._out = out
        self._tty = out.isatty()
        self._spoken = 0
        self._shown = 0
        self.enabled = len(self._ends) >= PROGRESS_MIN_SENTENCES

    def update(self, words: Sequence[str], audio_seconds: float) -> None:
        if not self.enabled:
            return
        self._spoken += sum(_letters(w) for w in words)
        done = sum(1 for end in self._ends if end <= self._spoken)
        if done == self._shown:
            return
        self._shown = done
        line = f"sentence {done}/{len(self._ends)}, {audio_seconds:.1f} s of audio so far"
        if self._tty:
            self._out.write(f"\r\x1b[K{line}")
        else:
            self._out.write(line + "\n")
        self._out.flush()

    def close(self) -> None:
        if self.enabled and self._tty and self._shown:
            self._out.write("\r\x1b[K")  # the result line replaces it
            self._out.flush()


def _letters(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


@dataclass(frozen=True)
class Spoken:
    pcm: bytes
    sample_rate: int
    first_audio: float  # seconds from sending the text to the first audio
    total: float


async def speak(
    text: str, tts: TTS, *, timeout: float = 10.0, progress: Progress | None = None
) -> Spoken:
    """Stream ``text`` through ``tts`` and collect its audio."""
    started = time.perf_counter()
    first_audio = 0.0
    chunks: list[bytes] = []
    samples = 0
    options = APIConnectOptions(max_retry=1, timeout=timeout)
    async with tts.stream(conn_options=options) as stream:
        stream.push_text(text)
        stream.end_input()
        async for ev in stream:
            if not chunks:
                first_audio = time.perf_counter() - started
            chunks.append(ev.frame.data.tobytes())
            samples += ev.frame.samples_per_channel
            if progress is not None:
                words = ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT) or []
                progress.update([str(w) for w in words], samples / tts.sample_rate)
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
    transport: TransportName = "websocket",
) -> Received:
    """Ask for ``text`` in one request and keep its audio payloads as they arrived (each
    checked by decoding it, so a corrupt stream is an error, not a broken file)."""
    ws_url, api_key = endpoint(url)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        conn = await _open(http, ws_url, api_key, timeout, transport)
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


async def _open(
    http: aiohttp.ClientSession,
    url: str,
    api_key: str | None,
    timeout: float,
    transport: TransportName,
) -> Transport:
    """One connection, over the transport asked for (HTTP too where the WebSocket is refused)."""
    if transport == "websocket":
        try:
            return await connect(http, url, api_key=api_key, timeout=timeout, heartbeat=None)
        except APIStatusError as e:
            if e.status_code not in NO_WEBSOCKET:
                raise
    return await http_transport.connect(
        http,
        url,
        api_key=api_key,
        timeout=timeout,
        model=DEFAULT_MODEL,
        keep_warm=None,
        connections=1,
    )


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
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=os.environ.get("KNOWLITHIC_TRANSPORT", "websocket").strip().lower(),
        help="websocket (default: KNOWLITHIC_TRANSPORT, else websocket), or http: one "
        "POST /v1/audio/speech per sentence",
    )
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        return _fail("nothing to say: the text is empty", 2)
    if (problem := _unwritable(args.output)) is not None:
        return _fail(f"cannot write {args.output}: {problem}", 2)
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
            transport=args.transport,
            word_timestamps=True,  # the progress counts the words the audio has reached
        )
    except ValueError as e:
        return _fail(str(e), 2)
    progress = Progress(text, sys.stderr)
    try:
        spoken = await _interruptible(speak(text, tts, progress=progress))
    except APIError as e:
        return _fail(e.message, 1)
    except _Interrupted:
        return _fail("interrupted; nothing written", 130)
    finally:
        progress.close()
        await tts.aclose()
    try:
        write_wav(args.output, spoken.pcm, spoken.sample_rate)
    except OSError as e:
        return _fail(f"cannot write {args.output}: {e.strerror or type(e).__name__}", 1)
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
        received = await _interruptible(
            receive_stream(
                url,
                text,
                voice=args.voice,
                sample_rate=args.sample_rate,
                output_format="opus",
                transport=args.transport,
            )
        )
    except APIError as e:
        return _fail(e.message, 1)
    except (formats.AudioFormatError, ValueError) as e:
        return _fail(str(e), 1)
    except _Interrupted:
        return _fail("interrupted; nothing written", 130)
    try:
        args.output.write_bytes(received.payloads)
    except OSError as e:
        return _fail(f"cannot write {args.output}: {e.strerror or type(e).__name__}", 1)
    kbits = len(received.payloads) * 8 / received.seconds / 1000 if received.seconds else 0.0
    print(
        f"wrote {args.output}: {received.seconds:.2f} s of Ogg Opus audio at "
        f"{received.sample_rate} Hz ({len(received.payloads)} bytes, {kbits:.1f} kbit/s); "
        f"first audio after {received.first_audio * 1000:.0f} ms, done in {received.total:.2f} s"
    )
    return 0


class _Interrupted(Exception):
    """Ctrl-C while speaking."""


async def _interruptible(work: Awaitable[T]) -> T:
    """``work``, cancelled cleanly (connections closed) on Ctrl-C instead of a traceback."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and not _current_cancelling():
            raise _Interrupted from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _current_cancelling() -> int:
    current = asyncio.current_task()
    return current.cancelling() if current is not None else 0


def _fail(message: str, code: int) -> int:
    """Every error is one line: no traceback, no error object's fields."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    # The tool says what went wrong itself, in one line; the framework's and the plugin's
    # log records (retries, "TTS failed after partial audio") would only repeat it.
    logging.getLogger().addHandler(logging.NullHandler())
    return asyncio.run(_main(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
