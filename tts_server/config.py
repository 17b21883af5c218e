"""Command-line flags and environment variables → one frozen :class:`ServerConfig`.

Every flag has an environment variable (``KNOWLITHIC_*``); a flag given on the command line
wins over its variable, which wins over the built-in default.  Each setting is declared once,
as a field of :class:`ServerConfig` whose metadata (:class:`Flag`) names its flag, variable,
help and parser: the parser and the loader are built from those fields.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import knowlithic_protocol as protocol
from knowlithic_protocol.limits import DEFAULT_BITRATE, MAX_BITRATE, MIN_BITRATE

from .engines import ENGINE_NAMES

BUNDLED_VOICE: Final = "joe"
# Replies are admitted by measured headroom (--first-audio-target); this count is only a
# safety net against a wrong prediction (very short replies, a machine the prior misjudges):
# twice the 24 conversations bench/server_capacity.py kept real-time on 2 cores.
DEFAULT_MAX_STREAMS: Final = 48
# The first audio a new reply must be predicted to get, in seconds: chosen by measurement
# (docs/server.md, "Admission by measured headroom").
DEFAULT_FIRST_AUDIO_TARGET: Final = 0.25
# Voice names and aliases stay within what a request may name (so every valid request has a
# size bound: min_message_size).
MAX_VOICE_LENGTH: Final = protocol.MAX_VOICE_LENGTH


@dataclass(frozen=True)
class VoiceSpec:
    """A voice to load: ``model_path`` ``None`` means the bundled joe voice."""

    name: str
    model_path: Path | None = None


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


def _bitrate(text: str) -> int:
    value = int(text)
    if not MIN_BITRATE <= value <= MAX_BITRATE:
        raise argparse.ArgumentTypeError(
            f"must be from {MIN_BITRATE} to {MAX_BITRATE} bit/s, not {value}"
        )
    return value


def _engine_name(text: str) -> str:
    name = text.strip().lower()
    if name not in ENGINE_NAMES:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(ENGINE_NAMES)}, not {text[:40]!r}"
        )
    return name


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


@dataclass(frozen=True)
class Flag:
    """How a :class:`ServerConfig` field is set: its flag, variable, help and parser.

    The field's default is the default; the flag is ``--`` and the field's name with dashes
    unless ``flag`` says otherwise; the variable is ``KNOWLITHIC_`` + ``var``.
    """

    var: str
    help: str
    convert: Callable[[str], Any] = str
    flag: str | None = None
    metavar: str | None = None
    # repeatable or comma-separated: the strings are handed to the loader as a list
    repeat: bool = False
    shown: str | None = None  # the default as the help shows it, when not the value itself


def setting(default: Any, var: str, help_text: str, **how: Any) -> Any:
    """A :class:`ServerConfig` field that has a flag and an environment variable."""
    return field(default=default, metadata={"flag": Flag(var, help_text, **how)})


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of the server, declared once: default, flag, variable and help."""

    hosts: tuple[str, ...] = setting(
        ("localhost",),
        "HOST",
        "Address to listen on. 'localhost' binds every loopback address it resolves to "
        "(127.0.0.1 and ::1), so ws://localhost:PORT works whichever the client picks; "
        "use 0.0.0.0 to listen on all interfaces.",
        flag="--host",
        metavar="HOST",
        repeat=True,
        shown="localhost",
    )
    port: int = setting(8000, "PORT", "TCP port.", convert=_port)
    voices: tuple[VoiceSpec, ...] = setting(
        (VoiceSpec(BUNDLED_VOICE),),
        "VOICES",
        f"A voice to load: {BUNDLED_VOICE!r} (the bundled en_US joe voice) or "
        "NAME=/path/to/model.onnx (its config is MODEL.onnx.json beside it).",
        flag="--voice",
        metavar="VOICE",
        repeat=True,
        shown=BUNDLED_VOICE,
    )
    aliases: tuple[tuple[str, str], ...] = setting(
        (("elise", BUNDLED_VOICE),),
        "VOICE_ALIASES",
        "Another name for a loaded voice, ALIAS=VOICE. Giving any replaces the default; "
        "an empty value means no aliases.",
        flag="--voice-alias",
        metavar="ALIAS=VOICE",
        repeat=True,
        shown=f"elise={BUNDLED_VOICE}",
    )
    # repr=False: the key must never end up in a log line or a traceback.
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "flag": Flag(
                "API_KEY",
                "Require this key from WebSocket clients (Authorization: Bearer KEY, or "
                "X-API-Key: KEY) and on /v1/voices and /metrics. Prefer the environment "
                "variable or --api-key-file: command lines are visible to other users.",
                shown="none (no authentication)",
            )
        },
    )
    engine: str = setting(
        "piper",
        "ENGINE",
        "Synthesis engine: piper.",
        convert=_engine_name,
    )
    workers: int = setting(
        2,
        "WORKERS",
        "Synthesis threads (sentences synthesized at once across all requests).",
        convert=_positive_int,
    )
    onnx_threads: int = setting(
        0,
        "ONNX_THREADS",
        "onnxruntime intra-op threads per synthesis; 0: adaptive, a thread per core for a "
        "synthesis alone and one thread for one beside others (more audio per core under load).",
        convert=_non_negative_int,
    )
    max_text_length: int = setting(
        5000,
        "MAX_TEXT_LENGTH",
        "Longest text of one request, in characters (longer: error text_too_long).",
        convert=_positive_int,
    )
    # Twice the minimum for the default text length (min_message_size(5000) is 65,632 bytes),
    # rounded to a power of two: room for clients that format their JSON loosely.
    max_message_size: int = setting(
        128 * 1024,
        "MAX_MESSAGE_SIZE",
        "Largest WebSocket message accepted, in bytes; a larger one closes the connection "
        "with code 1009. It may not be below what a valid request with a text of "
        "--max-text-length characters can take (12 bytes a character, plus "
        f"{min_message_size(0)}): the server refuses to start.",
        convert=_positive_int,
    )
    max_requests_per_connection: int = setting(
        8,
        "MAX_REQUESTS_PER_CONNECTION",
        "Requests in flight on one connection (more: error too_many_requests).",
        convert=_positive_int,
    )
    max_requests: int = setting(
        4 * DEFAULT_MAX_STREAMS,
        "MAX_REQUESTS",
        "Requests in flight on the whole server: with this many, a new stream gets error busy "
        "(at once, never queued); requests of streams already admitted still start.",
        convert=_positive_int,
    )
    first_audio_target: float = setting(
        DEFAULT_FIRST_AUDIO_TARGET,
        "FIRST_AUDIO_TARGET",
        "Seconds: a new reply is admitted while the server predicts, from what it measures "
        "(synthesis cost, event-loop lag, the work it owes), that the reply's first audio "
        "goes out within this and every admitted reply stays ahead of its playback; others "
        "get error busy at once. 0: no admission by headroom (only the hard caps).",
        convert=_non_negative_float,
    )
    max_streams: int = setting(
        DEFAULT_MAX_STREAMS,
        "MAX_STREAMS",
        "Hard cap on replies spoken at once, a safety net under --first-audio-target (a "
        "stream is every sentence request of one reply, by its stream_id; a request without "
        "one is a stream of its own). A request of a new stream over it gets error busy; "
        "later sentences of an admitted reply are never refused for capacity. 0: no cap.",
        convert=_non_negative_int,
    )
    stream_idle_window: float = setting(
        2.0,
        "STREAM_IDLE_WINDOW",
        "Seconds a stream stays admitted after its last request ended, waiting for the "
        "reply's next sentence; then its place is free. Once its audio has played, an idle "
        "stream gives its place to a new reply that finds the server full.",
        convert=_non_negative_float,
    )
    max_connections: int = setting(
        128,
        "MAX_CONNECTIONS",
        "Open WebSocket connections (more: HTTP 503 at the handshake).",
        convert=_positive_int,
    )
    rate_limit: float = setting(
        20.0,
        "RATE_LIMIT",
        "Requests per second each client IP may start, on average (token bucket; over it: "
        "error rate_limited); 0 disables. All sessions of one agent worker share its IP.",
        convert=_non_negative_float,
    )
    rate_burst: int = setting(
        60,
        "RATE_BURST",
        "Requests a client IP may start at once before --rate-limit applies (bucket size).",
        convert=_positive_int,
    )
    shutdown_grace: float = setting(
        10.0,
        "SHUTDOWN_GRACE",
        "Seconds in-flight requests may run after SIGTERM/SIGINT before they are cancelled.",
        convert=_non_negative_float,
    )
    heartbeat: float = setting(
        20.0,
        "HEARTBEAT",
        "Seconds between WebSocket pings to each client (a client that misses the pong is "
        "dropped); 0 disables.",
        convert=_non_negative_float,
    )
    send_timeout: float = setting(
        5.0,
        "SEND_TIMEOUT",
        "Seconds one message to a client may wait for the client to take earlier ones; a "
        "client that takes less in that time has stopped reading: its connection is dropped "
        "and its requests end, freeing their capacity. 0 disables.",
        convert=_non_negative_float,
    )
    sentence_silence: float = setting(
        0.25,
        "SENTENCE_SILENCE",
        "Seconds of silence between sentences.",
        convert=_non_negative_float,
    )
    opus_bitrate: int = setting(
        DEFAULT_BITRATE,
        "OPUS_BITRATE",
        f"Bit rate of Opus audio in bit/s ({MIN_BITRATE} to {MAX_BITRATE}), unless a request "
        "asks for its own.",
        convert=_bitrate,
    )
    chunk_ms: int = setting(
        40, "CHUNK_MS", "Milliseconds of audio per audio message (20 to 50).", convert=_chunk_ms
    )
    loudness_dbfs: float = setting(
        -21.0,
        "LOUDNESS",
        "Speech loudness in dBFS (RMS of voiced audio); one gain per voice, measured at "
        "start-up, is applied to every sentence.",
        flag="--loudness",
        convert=float,
        metavar="DBFS",
    )
    # None: the voice's own setting (from its .onnx.json).
    length_scale: float | None = setting(
        None,
        "LENGTH_SCALE",
        "Speaking pace: above 1 is slower, below 1 faster.",
        convert=_positive_float,
        shown="the voice's own (1.0 for joe)",
    )
    noise_scale: float | None = setting(
        None,
        "NOISE_SCALE",
        "Piper's voice variation (0 makes synthesis deterministic and flatter).",
        convert=_non_negative_float,
        shown="the voice's own (0.667 for joe)",
    )
    noise_w: float | None = setting(
        None,
        "NOISE_W",
        "Piper's phoneme-length variation (0 makes rhythm deterministic).",
        convert=_non_negative_float,
        shown="the voice's own (0.8 for joe)",
    )
    log_level: str = setting(
        "INFO",
        "LOG_LEVEL",
        "DEBUG, INFO, WARNING or ERROR.",
        convert=lambda s: s.upper(),
        metavar="LEVEL",
    )


_DEFAULTS: Final = ServerConfig()
# read from a file rather than a setting of its own: it sets api_key
_API_KEY_FILE: Final = Flag(
    "API_KEY_FILE",
    "Read the API key from this file (surrounding whitespace is ignored).",
    flag="--api-key-file",
    metavar="PATH",
    shown="none",
)


def _flags() -> list[tuple[str, Flag, Any]]:
    """(destination, flag, default) of every flag, in the order of ``ServerConfig``."""
    found = []
    for f in fields(ServerConfig):
        how: Flag = f.metadata["flag"]
        found.append((f.name, how, getattr(_DEFAULTS, f.name)))
        if f.name == "api_key":
            found.append(("api_key_file", _API_KEY_FILE, None))
    return found


def _flag_name(dest: str, how: Flag) -> str:
    return how.flag or "--" + dest.replace("_", "-")


def _shown(value: Any) -> str:
    """A default as the help shows it and a repeatable flag's environment value reads."""
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ",".join(f"{alias}={voice}" for alias, voice in value)  # the aliases
    if isinstance(value, tuple):
        return ",".join(_shown(item) for item in value)
    if isinstance(value, VoiceSpec):
        return value.name if value.model_path is None else f"{value.name}={value.model_path}"
    return str(value)


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
    for dest, how, default in _flags():
        name = "KNOWLITHIC_" + how.var
        raw = env.get(name)
        shown = how.shown if how.shown is not None else _shown(default)
        if how.repeat:
            # An append action would add flags to a list default, so the environment value
            # is kept aside and used only when the flag is absent.
            parser.add_argument(
                _flag_name(dest, how),
                dest=dest,
                action="append",
                metavar=how.metavar,
                default=None,
                help=f"{how.help} Repeatable, or comma-separated. [env {name}; default: {shown}]",
            )
            if raw is not None:
                env_lists[dest] = [raw]
            continue
        parser.add_argument(
            _flag_name(dest, how),
            dest=dest,
            type=how.convert,
            metavar=how.metavar,
            # argparse applies `type` to string defaults, so env values are validated too.
            default=raw if raw is not None else default,
            help=f"{how.help} [env {name}; default: {shown}]",
        )
    return parser, env_lists


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
        hosts = tuple(_items(ns.hosts)) if ns.hosts is not None else d.hosts
        if not hosts:
            raise ValueError("--host: at least one address is needed")
        voices = _parse_voices(ns.voices) if ns.voices is not None else d.voices
        aliases = (
            _parse_aliases(ns.aliases, voices)
            if ns.aliases is not None
            else _parse_aliases([_shown(d.aliases)], voices)
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
    # every other setting is taken as parsed
    parsed = {f.name: getattr(ns, f.name) for f in fields(ServerConfig)}
    parsed.update(hosts=hosts, voices=voices, aliases=aliases, api_key=api_key)
    return ServerConfig(**parsed)
