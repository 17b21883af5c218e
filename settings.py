"""The worker's configuration: read from the environment and validated in one place.

``load_settings`` checks every variable before it returns, and raises a single
:class:`ConfigError` that lists all the problems at once, so a broken deployment is fixed in
one round instead of one variable per restart.  Secret values never appear in messages or in
``repr(settings)``; problems name the variable instead.  ``.env.example`` documents every
variable with its default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

from knowlithic_protocol import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, OUTPUT_FORMATS, OutputFormat
from tts_custom.knowlithictts import (
    TRANSPORTS,
    URL_SCHEMES,
    TransportName,
    header_safe_key,
    split_urls,
)

__all__ = [
    "DEFAULT_GROQ_ATTEMPT_TIMEOUT",
    "DEFAULT_GROQ_FALLBACK_MODELS",
    "DEFAULT_GROQ_MODEL",
    "PROMPTS_DIR",
    "ConfigError",
    "Settings",
    "available_prompts",
    "load_settings",
]

PROMPTS_DIR: Final = Path(__file__).resolve().parent / "prompts"

# A current Groq production chat model (livekit-plugins-groq's models.py lists it, and it is the
# plugin's own default).  The seed's llama3-8b-8192 has been retired by Groq.
DEFAULT_GROQ_MODEL: Final = "llama-3.3-70b-versatile"
# Models Groq has shut down.  Refusing them at start-up beats a 404 on the caller's first turn.
RETIRED_GROQ_MODELS: Final = frozenset({"llama3-8b-8192", "llama3-70b-8192", "mixtral-8x7b-32768"})
# Models a turn moves to when the one before fails (llm_chain.py).  Groq production models from
# the plugin's list, each from another family than the default primary: Groq's rate limits
# are per model, and an overloaded model says little about another.  gpt-oss-120b is as able
# as the primary; llama-3.1-8b-instant is the fastest and has the highest limits, the last
# resort.  The primary is dropped from the list when it is in it.
DEFAULT_GROQ_FALLBACK_MODELS: Final = ("openai/gpt-oss-120b", "llama-3.1-8b-instant")
# GROQ_FALLBACK_MODELS=none: no fallback.  (A blank value means "unset", as for every variable,
# so a copied .env.example with `GROQ_FALLBACK_MODELS=` keeps the default chain.)
NO_FALLBACK: Final = "none"
# How long one model may keep the turn waiting: for its first chunk, and then between chunks.
# Groq's first token typically comes in 0.2-0.5 s (well under 1 s), so 2 s is 4x a normal wait:
# a slow answer is not cut off, and a stalled model costs the caller 2 s of silence before the
# next one starts, not the framework's 5 s (docs/reliability.md, "LLM provider faults").
DEFAULT_GROQ_ATTEMPT_TIMEOUT: Final = 2.0
MAX_GROQ_ATTEMPT_TIMEOUT: Final = 30.0
LLM_URL_SCHEMES: Final = ("http", "https")

# English, as the bundled voice speaks: "multi" would transcribe callers in languages the voice
# cannot answer in.  agent.py warns at start-up when the configured voice and this disagree.
DEFAULT_DEEPGRAM_LANGUAGE: Final = "en"
DEFAULT_TTS_SERVER: Final = "ws://localhost:8000"
# The longest a TTS fault (a server restarting, a silent server, a dropped socket) may keep
# the caller in silence before the session hears of it, every retry included.  A restart of
# the local server takes 1-2 s (measured: tests/test_server_restarts.py) and reconnects come
# at most 1 s apart while a reply waits, so a restart fits; a healthy server's first audio
# takes well under 0.5 s (docs/benchmarks.md).  docs/reliability.md has the reasoning.
DEFAULT_TTS_TIMEOUT: Final = 5.0
MAX_TTS_TIMEOUT: Final = 60.0
# When no TTS server can speak at all (the fault outlasted KNOWLITHIC_TIMEOUT), the caller hears
# a prepared apology and the call waits this long, from the failure, for a server to speak
# again before it says goodbye and ends (call_policy/outage.py, docs/reliability.md).  15 s
# holds a server restart (1-2 s) several times over and the 4 s apology, yet ends the call
# before a caller left hanging gives up on their own.
DEFAULT_TTS_OUTAGE_WAIT: Final = 15.0
MAX_TTS_OUTAGE_WAIT: Final = 120.0
# ...and the longest pause between two checks that a server can speak again: checks start
# 0.5 s apart and double up to this.
DEFAULT_TTS_PROBE_INTERVAL: Final = 2.0
MAX_TTS_PROBE_INTERVAL: Final = 30.0
DEFAULT_PROMPT: Final = "avery"
# How long `dev` and `start` try to reach LiveKit before they exit 1.  The framework gives up by
# itself after 16 attempts (about 130 s of waits when refused); this bounds the case it does
# not, a server that accepts and never answers (5 minutes per attempt), and lets the first
# connection fail sooner where a supervisor restarts the worker anyway.
DEFAULT_LIVEKIT_CONNECT_TIMEOUT: Final = 150.0
MAX_LIVEKIT_CONNECT_TIMEOUT: Final = 3600.0

_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
_PROMPT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more environment variables are missing or malformed.

    ``problems`` holds one line per variable; ``str(error)`` lists them all.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        count = len(self.problems)
        header = f"invalid configuration ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the worker reads from its environment, already validated.

    The LiveKit fields are ``None`` only when they were not required (``console`` mode and the
    job processes, which get their connection from the worker); ``load_settings`` fills them.
    """

    livekit_url: str | None
    livekit_api_key: str | None = field(repr=False)
    livekit_api_secret: str | None = field(repr=False)
    livekit_connect_timeout: float

    deepgram_api_key: str = field(repr=False)
    deepgram_model: str
    deepgram_language: str
    deepgram_filler_words: bool

    groq_api_key: str = field(repr=False)
    groq_model: str
    groq_fallback_models: tuple[str, ...]
    """Tried in order after ``groq_model``; never contains it; empty: no fallback."""
    groq_base_url: str | None = field(repr=False)
    """An OpenAI-compatible server instead of Groq's; ``None``: Groq.  It may hold credentials."""
    groq_attempt_timeout: float

    tts_server_url: str
    """One server URL, or several separated by commas in order of preference."""
    tts_api_key: str | None = field(repr=False)
    tts_voice: str
    tts_sample_rate: int
    tts_output_format: OutputFormat
    tts_transport: TransportName
    """``websocket``, or ``http``: OpenAI's speech API, to this server or a compatible one."""
    tts_timeout: float
    tts_outage_wait: float
    tts_probe_interval: float

    vad_activation_threshold: float
    vad_min_speech_duration: float
    vad_min_silence_duration: float

    endpointing_min_delay: float
    endpointing_max_delay: float
    interruption_min_duration: float
    false_interruption_timeout: float
    preemptive_generation: bool
    preemptive_tts: bool

    noise_cancellation: bool

    prompt_source: str
    """Where the instructions came from: ``prompts/<name>.md`` or ``SYSTEM_PROMPT``."""
    instructions: str = field(repr=False)


def available_prompts(prompts_dir: Path = PROMPTS_DIR) -> list[str]:
    """The names ``AGENT_PROMPT`` accepts: the stems of ``prompts_dir/*.md``, sorted."""
    if not prompts_dir.is_dir():
        return []
    return sorted(p.stem for p in prompts_dir.glob("*.md") if _PROMPT_NAME.fullmatch(p.stem))


def load_settings(
    environ: Mapping[str, str],
    *,
    require_livekit: bool = True,
    prompts_dir: Path = PROMPTS_DIR,
) -> Settings:
    """Build :class:`Settings` from ``environ``, or raise :class:`ConfigError` naming every
    missing or malformed variable.

    ``require_livekit=False`` lets ``LIVEKIT_URL``/``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET`` be
    absent (they are still checked when present): console mode never connects to LiveKit, and
    the worker's job processes are handed their connection by the worker.
    """
    env = _Reader(environ)
    prompt_env = _Reader(environ)  # its own reader so its problems are listed last
    prompt_source, instructions = _instructions(prompt_env, prompts_dir)
    tts_var = "KNOWLITHIC_TTS_SERVER" if env.get("KNOWLITHIC_TTS_SERVER") else "TTS_SERVER_URL"
    settings = Settings(
        livekit_url=env.url("LIVEKIT_URL", "the LiveKit server URL", required=require_livekit),
        livekit_api_key=env.secret(
            "LIVEKIT_API_KEY", "the LiveKit API key", required=require_livekit
        ),
        livekit_api_secret=env.secret(
            "LIVEKIT_API_SECRET", "the LiveKit API secret", required=require_livekit
        ),
        livekit_connect_timeout=env.parse(
            "LIVEKIT_CONNECT_TIMEOUT",
            DEFAULT_LIVEKIT_CONNECT_TIMEOUT,
            _up_to(MAX_LIVEKIT_CONNECT_TIMEOUT, "150"),
        ),
        deepgram_api_key=env.secret("DEEPGRAM_API_KEY", "your Deepgram API key") or "",
        deepgram_model=env.text("DEEPGRAM_MODEL", "nova-3"),
        deepgram_language=env.text("DEEPGRAM_LANGUAGE", DEFAULT_DEEPGRAM_LANGUAGE),
        deepgram_filler_words=env.parse("DEEPGRAM_FILLER_WORDS", False, _boolean),
        groq_api_key=env.secret("GROQ_API_KEY", "your Groq API key") or "",
        groq_model=env.parse("GROQ_MODEL", DEFAULT_GROQ_MODEL, _groq_model),
        groq_fallback_models=env.parse(
            "GROQ_FALLBACK_MODELS", DEFAULT_GROQ_FALLBACK_MODELS, _groq_models
        ),
        groq_base_url=_llm_url(env, "GROQ_BASE_URL"),
        groq_attempt_timeout=env.parse(
            "GROQ_ATTEMPT_TIMEOUT",
            DEFAULT_GROQ_ATTEMPT_TIMEOUT,
            _up_to(MAX_GROQ_ATTEMPT_TIMEOUT, "2"),
        ),
        tts_server_url=env.urls(tts_var, "the TTS server URL") or DEFAULT_TTS_SERVER,
        # optional: the local server needs none
        tts_api_key=env.parse("KNOWLITHIC_API_KEY", None, _header_value),
        tts_voice=env.text("KNOWLITHIC_VOICE", "elise"),
        tts_sample_rate=env.parse("KNOWLITHIC_SAMPLE_RATE", 16000, _sample_rate),
        tts_output_format=env.parse("KNOWLITHIC_OUTPUT_FORMAT", "wav", _output_format),
        tts_transport=env.parse("KNOWLITHIC_TRANSPORT", "websocket", _transport),
        tts_timeout=env.parse(
            "KNOWLITHIC_TIMEOUT", DEFAULT_TTS_TIMEOUT, _up_to(MAX_TTS_TIMEOUT, "5")
        ),
        tts_outage_wait=env.parse(
            "TTS_OUTAGE_WAIT", DEFAULT_TTS_OUTAGE_WAIT, _up_to(MAX_TTS_OUTAGE_WAIT, "15")
        ),
        tts_probe_interval=env.parse(
            "TTS_PROBE_INTERVAL", DEFAULT_TTS_PROBE_INTERVAL, _up_to(MAX_TTS_PROBE_INTERVAL, "2")
        ),
        vad_activation_threshold=env.parse("VAD_ACTIVATION_THRESHOLD", 0.5, _probability),
        vad_min_speech_duration=env.parse("VAD_MIN_SPEECH_DURATION", 0.05, _seconds),
        vad_min_silence_duration=env.parse("VAD_MIN_SILENCE_DURATION", 0.3, _seconds),
        endpointing_min_delay=env.parse("ENDPOINTING_MIN_DELAY", 0.9, _seconds),
        endpointing_max_delay=env.parse("ENDPOINTING_MAX_DELAY", 1.2, _seconds),
        interruption_min_duration=env.parse("INTERRUPTION_MIN_DURATION", 0.25, _seconds),
        false_interruption_timeout=env.parse("FALSE_INTERRUPTION_TIMEOUT", 1.0, _seconds),
        preemptive_generation=env.parse("PREEMPTIVE_GENERATION", True, _boolean),
        preemptive_tts=env.parse("PREEMPTIVE_TTS", False, _boolean),
        noise_cancellation=env.parse("NOISE_CANCELLATION", True, _boolean),
        prompt_source=prompt_source,
        instructions=instructions,
    )
    # The primary is tried first anyway: trying it again as a fallback would only add a wait.
    fallbacks = tuple(m for m in settings.groq_fallback_models if m != settings.groq_model)
    settings = dataclasses.replace(settings, groq_fallback_models=fallbacks)
    if settings.endpointing_max_delay < settings.endpointing_min_delay:
        env.problems.append(
            "ENDPOINTING_MAX_DELAY: must not be below ENDPOINTING_MIN_DELAY "
            f"({settings.endpointing_min_delay:g} s)"
        )
    if settings.tts_probe_interval > settings.tts_outage_wait:
        env.problems.append(
            "TTS_PROBE_INTERVAL: must not be above TTS_OUTAGE_WAIT "
            f"({settings.tts_outage_wait:g} s): the call would end before the first check"
        )
    problems = env.problems + prompt_env.problems
    if problems:
        raise ConfigError(problems)
    return settings


def _instructions(env: _Reader, prompts_dir: Path) -> tuple[str, str]:
    """``(source, text)``: ``SYSTEM_PROMPT`` when set, else the file ``AGENT_PROMPT`` names."""
    inline = env.get("SYSTEM_PROMPT")
    if inline:
        return "SYSTEM_PROMPT", inline
    name = env.text("AGENT_PROMPT", DEFAULT_PROMPT)
    choices = available_prompts(prompts_dir)
    if name not in choices:
        listed = ", ".join(choices) or f"none: {prompts_dir} has no .md files"
        env.problems.append(
            f"AGENT_PROMPT: no prompt named {name!r}; expected one of the files in "
            f"prompts/ without .md (available: {listed}), or set SYSTEM_PROMPT"
        )
        return "", ""
    text = (prompts_dir / f"{name}.md").read_text(encoding="utf-8").strip()
    if not text:
        env.problems.append(f"AGENT_PROMPT: prompts/{name}.md is empty")
    return f"prompts/{name}.md", text


class _Reader:
    """Reads variables and collects problems instead of stopping at the first one."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.problems: list[str] = []

    def get(self, name: str) -> str | None:
        """The stripped value, or ``None`` when unset or blank (``KEY=`` in a .env file)."""
        value = self._environ.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.get(name) or default

    def secret(self, name: str, what: str, *, required: bool = True) -> str | None:
        value = self.get(name)
        if value is None and required:
            self.problems.append(f"{name}: not set; expected {what}")
        return value

    def url(self, name: str, what: str, *, required: bool = False) -> str | None:
        value = self.get(name)
        if value is None:
            if required:
                self.problems.append(f"{name}: not set; expected {what} ({_schemes()})")
            return None
        # The value may carry credentials (user:password@host): describe it, never echo it.
        error = _url_error(value)
        if error:
            self.problems.append(f"{name}: {error}; expected {what} ({_schemes()})")
        return value

    def urls(self, name: str, what: str) -> str | None:
        """A URL, or several separated by commas (each checked as :meth:`url` does)."""
        value = self.get(name)
        if value is None:
            return None
        try:
            parts = split_urls(value)
        except ValueError as e:
            self.problems.append(f"{name}: {e}")
            return value
        for number, part in enumerate(parts, 1):
            error = _url_error(part)
            if error:
                where = f" (entry {number} of {len(parts)})" if len(parts) > 1 else ""
                self.problems.append(f"{name}: {error}{where}; expected {what} ({_schemes()})")
        if len(set(parts)) < len(parts):
            self.problems.append(f"{name}: names a server twice")
        return value

    def parse(self, name: str, default: T, parser: Callable[[str], T]) -> T:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            return parser(raw)
        except _SecretError as e:
            self.problems.append(f"{name}: {e}")  # never echo a secret
            return default
        except ValueError as e:
            self.problems.append(f"{name}: got {raw!r}; {e}")
            return default


def _llm_url(env: _Reader, name: str) -> str | None:
    """An http(s) URL of an OpenAI-compatible API, e.g. ``http://vllm:8000/v1``, or None."""
    value = env.get(name)
    if value is None:
        return None
    expected = "expected the http:// or https:// URL of an OpenAI-compatible API"
    # Like every URL here it may carry credentials: describe it, never echo it.
    error = _url_error(value)
    if error is None and urlsplit(value).scheme.lower() not in LLM_URL_SCHEMES:
        error = f"unsupported scheme {urlsplit(value).scheme!r}"
    if error:
        env.problems.append(f"{name}: {error}; {expected}")
        return None
    return value


def _schemes() -> str:
    return "://, ".join(URL_SCHEMES) + "://"


def _url_error(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return "not a valid URL"
    if "://" not in value:
        return "no scheme"
    if parts.scheme.lower() not in URL_SCHEMES:
        return f"unsupported scheme {parts.scheme!r}"
    if not parts.hostname:
        return "no host name"
    return None


# Parsers: raise ValueError saying what was expected; the caller prefixes the variable name.


def _finite_float(raw: str, expected: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value):
        raise ValueError(expected)
    return value


def _probability(raw: str) -> float:
    expected = "expected a number in the range 0 < value < 1, such as 0.5"
    value = _finite_float(raw, expected)
    if not 0.0 < value < 1.0:
        raise ValueError(expected)
    return value


def _seconds(raw: str) -> float:
    expected = "expected a duration in seconds: a number >= 0, such as 0.5"
    value = _finite_float(raw, expected)
    if value < 0.0:
        raise ValueError(expected)
    return value


def _output_format(raw: str) -> OutputFormat:
    for name in OUTPUT_FORMATS:
        if raw.strip().lower() == name:
            return name
    raise ValueError(f"expected one of {', '.join(OUTPUT_FORMATS)}")


def _transport(raw: str) -> TransportName:
    for name in TRANSPORTS:
        if raw.strip().lower() == name:
            return name
    raise ValueError(f"expected one of {', '.join(TRANSPORTS)}")


def _sample_rate(raw: str) -> int:
    expected = (
        f"expected a whole number of Hz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}, such as 16000"
    )
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(expected) from None
    if not MIN_SAMPLE_RATE <= value <= MAX_SAMPLE_RATE:
        raise ValueError(expected)
    return value


def _up_to(maximum: float, example: str) -> Callable[[str], float]:
    """A parser of seconds above 0 and at most ``maximum``."""

    def parse(raw: str) -> float:
        expected = f"expected seconds above 0 and at most {maximum:g}, such as {example}"
        value = _finite_float(raw, expected)
        if not 0.0 < value <= maximum:
            raise ValueError(expected)
        return value

    return parse


class _SecretError(ValueError):
    """A secret is malformed: say how, never what it is."""


def _header_value(raw: str) -> str:
    try:
        key = header_safe_key(raw)
    except ValueError as e:
        raise _SecretError(str(e)) from None
    assert key is not None  # raw is not blank
    return key


def _boolean(raw: str) -> bool:
    word = raw.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected one of true/false, 1/0, yes/no")


def _groq_model(raw: str) -> str:
    if raw in RETIRED_GROQ_MODELS:
        raise ValueError(
            f"Groq has retired this model; expected a current one such as {DEFAULT_GROQ_MODEL}"
        )
    return raw


def _groq_models(raw: str) -> tuple[str, ...]:
    """Comma-separated model names, in order, each once; ``none`` for no fallback."""
    if raw.lower() == NO_FALLBACK:
        return ()
    expected = (
        f"expected model names separated by commas, such as "
        f"{','.join(DEFAULT_GROQ_FALLBACK_MODELS)}, or {NO_FALLBACK} for no fallback"
    )
    models: list[str] = []
    for item in raw.split(","):
        name = item.strip()
        if not name or any(c.isspace() for c in name):
            raise ValueError(expected)
        if name in RETIRED_GROQ_MODELS:
            raise ValueError(f"Groq has retired {name}; {expected}")
        if name not in models:
            models.append(name)
    return tuple(models)
