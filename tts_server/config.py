"""Command-line flags and environment variables → one frozen :class:`ServerConfig`.

Every flag has an environment variable (``KNOWLITHIC_*``); a flag given on the command line
wins over its variable, which wins over the built-in default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tts_custom import protocol

BUNDLED_VOICE: Final = "joe"
# Replies spoken at once.  bench/server_capacity.py measured 10 kept real-time (first audio
# p95 under 400 ms, no gap in playback) on 2 cores with the default flags, and as many with
# the server pinned to one core: the limit is not proportional to cores, so it is a number,
# with a fifth of headroom for whatever else the machine runs (docs/server.md, "Capacity").
DEFAULT_MAX_STREAMS: Final = 8
# Voice names and aliases stay within what a request may name (so every valid request has a
# size bound: min_message_size).
MAX_VOICE_LENGTH: Final = protocol.MAX_VOICE_LENGTH


@dataclass(frozen=True)
class VoiceSpec:
    """A voice to load: ``model_path`` ``None`` means the bundled joe voice."""

    name: str
    model_path: Path | None = None


@dataclass(frozen=True)
class ServerConfig:
    hosts: tuple[str, ...] = ("localhost",)
    port: int = 8000
    voices: tuple[VoiceSpec, ...] = (VoiceSpec(BUNDLED_VOICE),)
    aliases: tuple[tuple[str, str], ...] = (("elise", BUNDLED_VOICE),)
    # repr=False: the key must never end up in a log line or a traceback.
    api_key: str | None = field(default=None, repr=False)
    workers: int = 2
    onnx_threads: int = 0
    max_text_length: int = 5000
    # Twice the minimum for the default text length (min_message_size(5000) is 65,632 bytes),
    # rounded to a power of two: room for clients that format their JSON loosely.
    max_message_size: int = 128 * 1024
    max_requests_per_connection: int = 8
    max_requests: int = 32
    # Replies (streams) spoken at once; 0 is no limit.
    max_streams: int = DEFAULT_MAX_STREAMS
    stream_idle_window: float = 2.0
    max_connections: int = 128
    rate_limit: float = 20.0
    rate_burst: int = 60
    shutdown_grace: float = 10.0
    heartbeat: float = 20.0
    send_timeout: float = 5.0
    sentence_silence: float = 0.25
    chunk_ms: int = 40
    loudness_dbfs: float = -21.0
    # None: the voice's own setting (from its .onnx.json).
    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w: float | None = None
    log_level: str = "INFO"


_DEFAULTS: Final = ServerConfig()


def min_message_size(max_text_length: int) -> int:
    """The largest valid ``text_to_speech`` message, in bytes, for this text limit.

    JSON may escape any character: ``\\uXXXX`` is 6 bytes, a character outside the BMP a
    surrogate pair of 12, yet it counts as one character against the limit.  So 12 bytes for
    each character of the text, request_id, stream_id and voice (128 each, in the protocol);
    1 KiB covers the rest: the keys and fixed values escaped the same
    way take 583 bytes, which leaves 441 for whitespace.  Fields the protocol does not define
    are not counted.
    """
    ids = 2 * protocol.MAX_REQUEST_ID_LENGTH + MAX_VOICE_LENGTH
    return 12 * (max_text_length + ids) + 1024


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, not {value}")
    return value


def _chunk_ms(text: str) -> int:
    value = int(text)
    if not 20 <= value <= 50:
        raise argparse.ArgumentTypeError(f"must be from 20 to 50 ms, not {value}")
    return value


def _items(values: Sequence[str]) -> list[str]:
    """Comma-separated and repeated values, flattened; empty items dropped."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _parse_voices(values: Sequence[str]) -> tuple[VoiceSpec, ...]:
    specs: dict[str, VoiceSpec] = {}
    for item in _items(values):
        name, sep, path = item.partition("=")
        name = name.strip().lower()
        if not sep:
            if name != BUNDLED_VOICE:
                raise ValueError(f"voice {item!r}: give NAME=MODEL.onnx, or {BUNDLED_VOICE!r}")
            spec = VoiceSpec(BUNDLED_VOICE)
        else:
            if not name or not path.strip():
                raise ValueError(f"voice {item!r}: give NAME=MODEL.onnx")
            spec = VoiceSpec(name, Path(path.strip()))
        if len(name) > MAX_VOICE_LENGTH:
            raise ValueError(f"voice names are at most {MAX_VOICE_LENGTH} characters")
        if name in specs:
            raise ValueError(f"voice {name!r} is given twice")
        specs[name] = spec
    if not specs:
        raise ValueError("at least one voice is needed")
    return tuple(specs.values())


def _parse_aliases(
    values: Sequence[str], voices: Sequence[VoiceSpec]
) -> tuple[tuple[str, str], ...]:
    names = {v.name for v in voices}
    aliases: dict[str, str] = {}
    for item in _items(values):
        alias, sep, target = (part.strip().lower() for part in item.partition("="))
        if not sep or not alias or not target:
            raise ValueError(f"alias {item!r}: give ALIAS=VOICE")
        if target not in names:
            raise ValueError(f"alias {alias!r} points to {target!r}, which is not a loaded voice")
        if alias in names:
            raise ValueError(f"alias {alias!r} would hide the voice of the same name")
        if len(alias) > MAX_VOICE_LENGTH:
            raise ValueError(f"aliases are at most {MAX_VOICE_LENGTH} characters")
        aliases[alias] = target
    return tuple(sorted(aliases.items()))


def build_parser(
    environ: Mapping[str, str] | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, list[str]]]:
    """The parser, and the environment's values for the repeatable flags."""
    env = os.environ if environ is None else environ
    env_lists: dict[str, list[str]] = {}
    parser = argparse.ArgumentParser(
        prog="python -m tts_server",
        description=(
            "Self-hosted TTS server speaking the Knowlithic WebSocket protocol, backed by "
            "Piper. Every flag can also be set by the environment variable named in its help; "
            "the flag wins."
        ),
    )

    def add(
        flag: str,
        var: str,
        help_text: str,
        *,
        default: Any,
        convert: Callable[[str], Any] = str,
        metavar: str | None = None,
        repeat: bool = False,
        shown: str | None = None,
    ) -> None:
        name = "KNOWLITHIC_" + var
        raw = env.get(name)
        shown_default = shown if shown is not None else str(default)
        if repeat:
            # An append action would add flags to a list default, so the environment value
            # is kept aside and used only when the flag is absent.
            parser.add_argument(
                flag,
                action="append",
                metavar=metavar,
                default=None,
                help=f"{help_text} Repeatable, or comma-separated. "
                f"[env {name}; default: {shown_default}]",
            )
            if raw is not None:
                env_lists[_dest(flag)] = [raw]
            return
        parser.add_argument(
            flag,
            type=convert,
            metavar=metavar,
            # argparse applies `type` to string defaults, so env values are validated too.
            default=raw if raw is not None else default,
            help=f"{help_text} [env {name}; default: {shown_default}]",
        )

    d = _DEFAULTS
    add(
        "--host",
        "HOST",
        "Address to listen on. 'localhost' binds every loopback address it resolves to "
        "(127.0.0.1 and ::1), so ws://localhost:PORT works whichever the client picks; "
        "use 0.0.0.0 to listen on all interfaces.",
        default=",".join(d.hosts),
        metavar="HOST",
        repeat=True,
    )
    add("--port", "PORT", "TCP port.", default=d.port, convert=_port)
    add(
        "--voice",
        "VOICES",
        f"A voice to load: {BUNDLED_VOICE!r} (the bundled en_US joe voice) or "
        "NAME=/path/to/model.onnx (its config is MODEL.onnx.json beside it).",
        default=BUNDLED_VOICE,
        metavar="VOICE",
        repeat=True,
    )
    add(
        "--voice-alias",
        "VOICE_ALIASES",
        "Another name for a loaded voice, ALIAS=VOICE. Giving any replaces the default; "
        "an empty value means no aliases.",
        default=",".join(f"{a}={t}" for a, t in d.aliases),
        metavar="ALIAS=VOICE",
        repeat=True,
    )
    add(
        "--api-key",
        "API_KEY",
        "Require this key from WebSocket clients (Authorization: Bearer KEY, or X-API-Key: "
        "KEY) and on /v1/voices and /metrics. Prefer the environment variable or "
        "--api-key-file: command lines are visible to other users.",
        default=None,
        shown="none (no authentication)",
    )
    add(
        "--api-key-file",
        "API_KEY_FILE",
        "Read the API key from this file (surrounding whitespace is ignored).",
        default=None,
        shown="none",
        metavar="PATH",
    )
    add(
        "--workers",
        "WORKERS",
        "Synthesis threads (sentences synthesized at once across all requests).",
        default=d.workers,
        convert=_positive_int,
    )
    add(
        "--onnx-threads",
        "ONNX_THREADS",
        "onnxruntime intra-op threads per synthesis; 0 lets onnxruntime choose (one per core).",
        default=d.onnx_threads,
        convert=_non_negative_int,
    )
    add(
        "--max-text-length",
        "MAX_TEXT_LENGTH",
        "Longest text of one request, in characters (longer: error text_too_long).",
        default=d.max_text_length,
        convert=_positive_int,
    )
    add(
        "--max-message-size",
        "MAX_MESSAGE_SIZE",
        "Largest WebSocket message accepted, in bytes; a larger one closes the connection "
        "with code 1009. It may not be below what a valid request with a text of "
        f"--max-text-length characters can take (12 bytes a character, plus "
        f"{min_message_size(0)}): the server refuses to start.",
        default=d.max_message_size,
        convert=_positive_int,
    )
    add(
        "--max-requests-per-connection",
        "MAX_REQUESTS_PER_CONNECTION",
        "Requests in flight on one connection (more: error too_many_requests).",
        default=d.max_requests_per_connection,
        convert=_positive_int,
    )
    add(
        "--max-requests",
        "MAX_REQUESTS",
        "Requests in flight on the whole server: with this many, a new stream gets error busy "
        "(at once, never queued); requests of streams already admitted still start.",
        default=d.max_requests,
        convert=_positive_int,
    )
    add(
        "--max-streams",
        "MAX_STREAMS",
        "Replies spoken at once (a stream is every sentence request of one reply, by its "
        "stream_id; a request without one is a stream of its own). A request of a new stream "
        "over the limit gets error busy; later sentences of an admitted reply are never "
        "refused for capacity. 0: no limit. Measure a machine with bench/server_capacity.py.",
        default=d.max_streams,
        convert=_non_negative_int,
    )
    add(
        "--stream-idle-window",
        "STREAM_IDLE_WINDOW",
        "Seconds a stream stays admitted after its last request ended, waiting for the "
        "reply's next sentence; then its place is free. Once its audio has played, an idle "
        "stream gives its place to a new reply that finds the server full.",
        default=d.stream_idle_window,
        convert=_non_negative_float,
    )
    add(
        "--max-connections",
        "MAX_CONNECTIONS",
        "Open WebSocket connections (more: HTTP 503 at the handshake).",
        default=d.max_connections,
        convert=_positive_int,
    )
    add(
        "--rate-limit",
        "RATE_LIMIT",
        "Requests per second each client IP may start, on average (token bucket; over it: "
        "error rate_limited); 0 disables. All sessions of one agent worker share its IP.",
        default=d.rate_limit,
        convert=_non_negative_float,
    )
    add(
        "--rate-burst",
        "RATE_BURST",
        "Requests a client IP may start at once before --rate-limit applies (bucket size).",
        default=d.rate_burst,
        convert=_positive_int,
    )
    add(
        "--shutdown-grace",
        "SHUTDOWN_GRACE",
        "Seconds in-flight requests may run after SIGTERM/SIGINT before they are cancelled.",
        default=d.shutdown_grace,
        convert=_non_negative_float,
    )
    add(
        "--heartbeat",
        "HEARTBEAT",
        "Seconds between WebSocket pings to each client (a client that misses the pong is "
        "dropped); 0 disables.",
        default=d.heartbeat,
        convert=_non_negative_float,
    )
    add(
        "--send-timeout",
        "SEND_TIMEOUT",
        "Seconds one message to a client may wait for the client to take earlier ones; a "
        "client that takes less in that time has stopped reading: its connection is dropped "
        "and its requests end, freeing their capacity. 0 disables.",
        default=d.send_timeout,
        convert=_non_negative_float,
    )
    add(
        "--sentence-silence",
        "SENTENCE_SILENCE",
        "Seconds of silence between sentences.",
        default=d.sentence_silence,
        convert=_non_negative_float,
    )
    add(
        "--chunk-ms",
        "CHUNK_MS",
        "Milliseconds of audio per audio message (20 to 50).",
        default=d.chunk_ms,
        convert=_chunk_ms,
    )
    add(
        "--loudness",
        "LOUDNESS",
        "Speech loudness in dBFS (RMS of voiced audio); one gain per voice, measured at "
        "start-up, is applied to every sentence.",
        default=d.loudness_dbfs,
        convert=float,
        metavar="DBFS",
    )
    add(
        "--length-scale",
        "LENGTH_SCALE",
        "Speaking pace: above 1 is slower, below 1 faster.",
        default=None,
        convert=_positive_float,
        shown="the voice's own (1.0 for joe)",
    )
    add(
        "--noise-scale",
        "NOISE_SCALE",
        "Piper's voice variation (0 makes synthesis deterministic and flatter).",
        default=None,
        convert=_non_negative_float,
        shown="the voice's own (0.667 for joe)",
    )
    add(
        "--noise-w",
        "NOISE_W",
        "Piper's phoneme-length variation (0 makes rhythm deterministic).",
        default=None,
        convert=_non_negative_float,
        shown="the voice's own (0.8 for joe)",
    )
    add(
        "--log-level",
        "LOG_LEVEL",
        "DEBUG, INFO, WARNING or ERROR.",
        default=d.log_level,
        convert=lambda s: s.upper(),
        metavar="LEVEL",
    )
    return parser, env_lists


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Parse flags (``sys.argv`` when ``argv`` is None) and the environment."""
    parser, env_lists = build_parser(environ)
    ns = parser.parse_args(argv)
    for dest, values in env_lists.items():
        if getattr(ns, dest) is None:
            setattr(ns, dest, values)
    d = _DEFAULTS
    try:
        hosts = tuple(_items(ns.host)) if ns.host is not None else d.hosts
        if not hosts:
            raise ValueError("--host: at least one address is needed")
        voices = _parse_voices(ns.voice) if ns.voice is not None else d.voices
        aliases = (
            _parse_aliases(ns.voice_alias, voices)
            if ns.voice_alias is not None
            else _parse_aliases([f"{a}={t}" for a, t in d.aliases], voices)
            if any(v.name == BUNDLED_VOICE for v in voices)
            else ()
        )
        api_key: str | None = ns.api_key or None
        if ns.api_key_file:
            api_key = Path(ns.api_key_file).read_text(encoding="utf-8").strip() or None
            if api_key is None:
                raise ValueError("--api-key-file: the file is empty")
        minimum = min_message_size(ns.max_text_length)
        if ns.max_message_size < minimum:
            raise ValueError(
                f"--max-message-size {ns.max_message_size} is below {minimum}, the size of the "
                f"longest valid request with --max-text-length {ns.max_text_length}: give at "
                f"least {minimum}, or a lower --max-text-length"
            )
        if ns.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"--log-level: unknown level {ns.log_level!r}")
    except (ValueError, OSError) as e:
        parser.error(str(e))
    return ServerConfig(
        hosts=hosts,
        port=ns.port,
        voices=voices,
        aliases=aliases,
        api_key=api_key,
        workers=ns.workers,
        onnx_threads=ns.onnx_threads,
        max_text_length=ns.max_text_length,
        max_message_size=ns.max_message_size,
        max_requests_per_connection=ns.max_requests_per_connection,
        max_requests=ns.max_requests,
        max_streams=ns.max_streams,
        stream_idle_window=ns.stream_idle_window,
        max_connections=ns.max_connections,
        rate_limit=ns.rate_limit,
        rate_burst=ns.rate_burst,
        shutdown_grace=ns.shutdown_grace,
        heartbeat=ns.heartbeat,
        send_timeout=ns.send_timeout,
        sentence_silence=ns.sentence_silence,
        chunk_ms=ns.chunk_ms,
        loudness_dbfs=ns.loudness,
        length_scale=ns.length_scale,
        noise_scale=ns.noise_scale,
        noise_w=ns.noise_w,
        log_level=ns.log_level,
    )
