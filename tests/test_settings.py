"""settings.load_settings: defaults, validation, and that secrets never leak."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import get_args

import pytest
from livekit.plugins.groq.models import LLMModels

from settings import (
    DEFAULT_GROQ_ATTEMPT_TIMEOUT,
    DEFAULT_GROQ_FALLBACK_MODELS,
    DEFAULT_GROQ_MODEL,
    PROMPTS_DIR,
    RETIRED_GROQ_MODELS,
    ConfigError,
    Settings,
    available_prompts,
    load_settings,
)
from tts_custom.knowlithictts import TTS, URL_SCHEMES

SECRETS = {
    "LIVEKIT_API_KEY": "lk-key-s3cr3t-aaaa",
    "LIVEKIT_API_SECRET": "lk-secret-s3cr3t-bbbb",
    "DEEPGRAM_API_KEY": "dg-s3cr3t-cccc",
    "GROQ_API_KEY": "gsk_s3cr3t-dddd",
    "KNOWLITHIC_API_KEY": "kn-s3cr3t-eeee",
}
REQUIRED = {
    "LIVEKIT_URL": "wss://example.livekit.cloud",
    "LIVEKIT_API_KEY": SECRETS["LIVEKIT_API_KEY"],
    "LIVEKIT_API_SECRET": SECRETS["LIVEKIT_API_SECRET"],
    "DEEPGRAM_API_KEY": SECRETS["DEEPGRAM_API_KEY"],
    "GROQ_API_KEY": SECRETS["GROQ_API_KEY"],
}
REQUIRED_NAMES = list(REQUIRED)


def load(**overrides: str) -> Settings:
    return load_settings({**REQUIRED, **overrides})


def problems(
    env: dict[str, str], *, require_livekit: bool = True, prompts_dir: Path = PROMPTS_DIR
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env, require_livekit=require_livekit, prompts_dir=prompts_dir)
    return info.value


def problem_for(name: str, **overrides: str) -> str:
    """The single problem line reported for ``name``."""
    error = problems({**REQUIRED, **overrides})
    lines = [p for p in error.problems if p.startswith(f"{name}:")]
    assert len(lines) == 1, error.problems
    return lines[0]


# --- defaults ----------------------------------------------------------------


def test_defaults() -> None:
    s = load()
    assert s.livekit_url == "wss://example.livekit.cloud"
    assert s.deepgram_model == "nova-3"
    assert s.deepgram_language == "en"
    assert s.livekit_connect_timeout == 150.0
    assert s.deepgram_filler_words is False
    assert s.groq_model == DEFAULT_GROQ_MODEL == "llama-3.3-70b-versatile"
    assert s.groq_fallback_models == ("openai/gpt-oss-120b", "llama-3.1-8b-instant")
    assert s.groq_base_url is None
    assert s.groq_attempt_timeout == 2.0
    assert s.tts_server_url == "ws://localhost:8000"
    assert s.tts_api_key is None
    assert s.tts_voice == "elise"
    assert s.tts_sample_rate == 16000
    assert s.tts_timeout == 5.0
    assert s.tts_outage_wait == 15.0
    assert s.tts_probe_interval == 2.0
    assert s.vad_activation_threshold == 0.5
    assert s.vad_min_speech_duration == 0.05
    assert s.vad_min_silence_duration == 0.3
    assert (s.endpointing_min_delay, s.endpointing_max_delay) == (0.9, 1.2)
    assert s.interruption_min_duration == 0.25
    assert s.false_interruption_timeout == 1.0
    assert s.preemptive_generation is True
    assert s.noise_cancellation is True
    assert s.prompt_source == "prompts/avery.md"
    assert s.instructions == (PROMPTS_DIR / "avery.md").read_text(encoding="utf-8").strip()


def test_default_groq_model_is_one_the_plugin_lists() -> None:
    assert DEFAULT_GROQ_MODEL in get_args(LLMModels)


def test_default_fallback_models_are_current_plugin_models_other_than_the_primary() -> None:
    assert DEFAULT_GROQ_FALLBACK_MODELS
    for model in DEFAULT_GROQ_FALLBACK_MODELS:
        assert model in get_args(LLMModels)
        assert model not in RETIRED_GROQ_MODELS
    assert DEFAULT_GROQ_MODEL not in DEFAULT_GROQ_FALLBACK_MODELS
    assert len(set(DEFAULT_GROQ_FALLBACK_MODELS)) == len(DEFAULT_GROQ_FALLBACK_MODELS)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load().groq_model = "other"  # type: ignore[misc]


def test_values_are_read_and_stripped() -> None:
    s = load(
        DEEPGRAM_MODEL=" nova-2 ",
        DEEPGRAM_LANGUAGE="en-US",
        GROQ_MODEL="openai/gpt-oss-20b",
        KNOWLITHIC_API_KEY="k",
        KNOWLITHIC_VOICE="joe",
        KNOWLITHIC_SAMPLE_RATE="24000",
        KNOWLITHIC_OUTPUT_FORMAT=" PCM ",
        KNOWLITHIC_TRANSPORT=" HTTP ",
        VAD_ACTIVATION_THRESHOLD="0.35",
        VAD_MIN_SPEECH_DURATION="0",
        VAD_MIN_SILENCE_DURATION="1.5",
        NOISE_CANCELLATION="no",
    )
    assert (s.deepgram_model, s.deepgram_language) == ("nova-2", "en-US")
    assert s.groq_model == "openai/gpt-oss-20b"
    assert (s.tts_api_key, s.tts_voice, s.tts_sample_rate) == ("k", "joe", 24000)
    assert s.tts_output_format == "pcm"
    assert s.tts_transport == "http"
    assert s.vad_activation_threshold == 0.35
    assert (s.vad_min_speech_duration, s.vad_min_silence_duration) == (0.0, 1.5)
    assert s.noise_cancellation is False


def test_blank_values_count_as_unset() -> None:
    # `NAME=` lines in a .env file: the default applies, or the variable is reported missing.
    s = load(DEEPGRAM_MODEL="", KNOWLITHIC_SAMPLE_RATE="  ", NOISE_CANCELLATION="")
    assert (s.deepgram_model, s.tts_sample_rate, s.noise_cancellation) == ("nova-3", 16000, True)
    assert problem_for("GROQ_API_KEY", GROQ_API_KEY=" ")


# --- required variables ------------------------------------------------------


def test_every_missing_variable_is_named_in_one_error() -> None:
    error = problems({})
    message = str(error)
    for name in REQUIRED_NAMES:
        assert name in message
    # one line per problem, each saying what is expected
    assert len(error.problems) == len(REQUIRED_NAMES)
    assert all("expected" in p for p in error.problems)
    assert message.count("\n") == len(REQUIRED_NAMES)


@pytest.mark.parametrize("name", REQUIRED_NAMES)
def test_each_required_variable_is_reported_alone(name: str) -> None:
    (line,) = problems({k: v for k, v in REQUIRED.items() if k != name}).problems
    assert line.startswith(f"{name}: not set; expected ")


def test_missing_and_malformed_are_reported_together() -> None:
    error = problems(
        {
            "GROQ_API_KEY": "x",
            "VAD_ACTIVATION_THRESHOLD": "20.0",
            "NOISE_CANCELLATION": "maybe",
            "KNOWLITHIC_SAMPLE_RATE": "16k",
            "KNOWLITHIC_OUTPUT_FORMAT": "flac",
            "KNOWLITHIC_TRANSPORT": "grpc",
            "KNOWLITHIC_TTS_SERVER": "localhost:8000",
            "AGENT_PROMPT": "nobody",
        }
    )
    named = {p.split(":", 1)[0] for p in error.problems}
    assert named == {
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
        "DEEPGRAM_API_KEY",
        "VAD_ACTIVATION_THRESHOLD",
        "NOISE_CANCELLATION",
        "KNOWLITHIC_SAMPLE_RATE",
        "KNOWLITHIC_OUTPUT_FORMAT",
        "KNOWLITHIC_TRANSPORT",
        "KNOWLITHIC_TTS_SERVER",
        "AGENT_PROMPT",
    }


def test_livekit_can_be_optional_but_is_still_checked() -> None:
    env = {k: v for k, v in REQUIRED.items() if not k.startswith("LIVEKIT_")}
    s = load_settings(env, require_livekit=False)
    assert (s.livekit_url, s.livekit_api_key, s.livekit_api_secret) == (None, None, None)

    error = problems({**env, "LIVEKIT_URL": "localhost:7880"}, require_livekit=False)
    assert [p.split(":", 1)[0] for p in error.problems] == ["LIVEKIT_URL"]


# --- VAD ---------------------------------------------------------------------


def test_activation_threshold_20_is_refused_with_the_valid_range() -> None:
    line = problem_for("VAD_ACTIVATION_THRESHOLD", VAD_ACTIVATION_THRESHOLD="20.0")
    assert "'20.0'" in line
    assert "0 < value < 1" in line


@pytest.mark.parametrize("raw", ["0", "1", "1.0", "-0.2", "nan", "inf", "half", "50%"])
def test_activation_threshold_outside_0_1_is_refused(raw: str) -> None:
    assert "0 < value < 1" in problem_for("VAD_ACTIVATION_THRESHOLD", VAD_ACTIVATION_THRESHOLD=raw)


@pytest.mark.parametrize("name", ["VAD_MIN_SPEECH_DURATION", "VAD_MIN_SILENCE_DURATION"])
@pytest.mark.parametrize("raw", ["-0.1", "inf", "nan", "3s"])
def test_durations_must_be_non_negative_numbers(name: str, raw: str) -> None:
    assert ">= 0" in problem_for(name, **{name: raw})


# --- URLs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ws://h:7880", "wss://h.example.com", "http://10.0.0.2:7880", "HTTPS://h/"]
)
def test_livekit_url_schemes(url: str) -> None:
    assert load(LIVEKIT_URL=url).livekit_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("localhost:7880", "no scheme"),
        ("ftp://host", "unsupported scheme 'ftp'"),
        ("wss://", "no host name"),
        ("ws://host:port", "not a valid URL"),
        ("just words", "no scheme"),
    ],
)
@pytest.mark.parametrize("name", ["LIVEKIT_URL", "KNOWLITHIC_TTS_SERVER", "TTS_SERVER_URL"])
def test_bad_urls_are_refused(name: str, url: str, why: str) -> None:
    line = problem_for(name, **{name: url})
    assert why in line
    assert "ws://, wss://, http://, https://" in line


def test_tts_server_url_is_the_fallback() -> None:
    assert load(TTS_SERVER_URL="wss://tts.example.com").tts_server_url == "wss://tts.example.com"


def test_several_tts_servers_are_a_comma_separated_list() -> None:
    listed = "ws://tts-a:8000, wss://tts-b.example"
    s = load(KNOWLITHIC_TTS_SERVER=listed)
    assert s.tts_server_url == listed
    assert TTS(base_url=s.tts_server_url)._opts.urls == ("ws://tts-a:8000", "wss://tts-b.example")


@pytest.mark.parametrize(
    ("listed", "why"),
    [
        ("ws://a:8000,,ws://b:8000", "empty entry"),
        ("ws://a:8000,ftp://b", "unsupported scheme 'ftp' (entry 2 of 2)"),
        ("ws://a:8000,ws://a:8000", "names a server twice"),
    ],
)
def test_bad_tts_server_lists_are_refused(listed: str, why: str) -> None:
    assert why in problem_for("KNOWLITHIC_TTS_SERVER", KNOWLITHIC_TTS_SERVER=listed)


def test_knowlithic_tts_server_wins_over_the_fallback() -> None:
    s = load(KNOWLITHIC_TTS_SERVER="ws://primary:8000", TTS_SERVER_URL="ws://fallback:8000")
    assert s.tts_server_url == "ws://primary:8000"
    # and the fallback is not even checked when it is not used
    assert load(KNOWLITHIC_TTS_SERVER="ws://primary:8000", TTS_SERVER_URL="junk")


# --- booleans and integers ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *[("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True)],
        *[("false", False), ("False", False), ("0", False), ("no", False), ("NO", False)],
    ],
)
def test_booleans(raw: str, value: bool) -> None:
    assert load(NOISE_CANCELLATION=raw).noise_cancellation is value


@pytest.mark.parametrize("raw", ["maybe", "on", "off", "2", "y", "t", "truee"])
def test_other_booleans_are_refused(raw: str) -> None:
    assert "true/false, 1/0, yes/no" in problem_for("NOISE_CANCELLATION", NOISE_CANCELLATION=raw)


@pytest.mark.parametrize("raw", ["8000", "22050", "48000"])
def test_sample_rates(raw: str) -> None:
    assert load(KNOWLITHIC_SAMPLE_RATE=raw).tts_sample_rate == int(raw)


@pytest.mark.parametrize("raw", ["7999", "48001", "0", "-16000", "16k", "16000.0", "sixteen"])
def test_bad_sample_rates_are_refused(raw: str) -> None:
    line = problem_for("KNOWLITHIC_SAMPLE_RATE", KNOWLITHIC_SAMPLE_RATE=raw)
    assert "8000 to 48000" in line


def test_the_longest_endpointing_delay_cannot_be_below_the_shortest() -> None:
    line = problem_for(
        "ENDPOINTING_MAX_DELAY", ENDPOINTING_MIN_DELAY="1.0", ENDPOINTING_MAX_DELAY="0.5"
    )
    assert "ENDPOINTING_MIN_DELAY" in line


@pytest.mark.parametrize("raw", ["0", "-1", "61", "nan", "soon"])
def test_a_tts_timeout_must_be_a_bounded_positive_duration(raw: str) -> None:
    assert "at most 60" in problem_for("KNOWLITHIC_TIMEOUT", KNOWLITHIC_TIMEOUT=raw)


@pytest.mark.parametrize(
    ("name", "raw", "said"),
    [
        ("TTS_OUTAGE_WAIT", "0", "at most 120"),
        ("TTS_OUTAGE_WAIT", "121", "at most 120"),
        ("TTS_OUTAGE_WAIT", "inf", "at most 120"),
        ("TTS_PROBE_INTERVAL", "-1", "at most 30"),
        ("TTS_PROBE_INTERVAL", "often", "at most 30"),
    ],
)
def test_the_outage_bounds_are_bounded_positive_durations(name: str, raw: str, said: str) -> None:
    assert said in problem_for(name, **{name: raw})


def test_the_outage_probes_fit_in_the_outage_wait() -> None:
    s = load(TTS_OUTAGE_WAIT="30", TTS_PROBE_INTERVAL="5")
    assert (s.tts_outage_wait, s.tts_probe_interval) == (30.0, 5.0)
    line = problem_for("TTS_PROBE_INTERVAL", TTS_OUTAGE_WAIT="3", TTS_PROBE_INTERVAL="5")
    assert "TTS_OUTAGE_WAIT" in line


@pytest.mark.parametrize("bad", ["kn-s3cr3t eeee", "kn-s3cr3t\neeee", "kn-s3cr3t\u00e9"])
def test_a_tts_key_that_cannot_travel_in_a_header_is_refused_without_echoing_it(
    bad: str,
) -> None:
    line = problem_for("KNOWLITHIC_API_KEY", KNOWLITHIC_API_KEY=bad)
    assert "header" in line and "s3cr3t" not in line


def test_fallback_models_are_read_in_order_without_repeats_or_the_primary() -> None:
    s = load(
        GROQ_MODEL="qwen/qwen3-32b",
        GROQ_FALLBACK_MODELS=" openai/gpt-oss-20b , qwen/qwen3-32b,llama-3.1-8b-instant,"
        "openai/gpt-oss-20b",
    )
    assert s.groq_fallback_models == ("openai/gpt-oss-20b", "llama-3.1-8b-instant")
    # the default list loses the primary too, when the primary is one of its models
    assert load(GROQ_MODEL="llama-3.1-8b-instant").groq_fallback_models == ("openai/gpt-oss-120b",)


@pytest.mark.parametrize("raw", ["none", "None", " NONE "])
def test_none_means_no_fallback(raw: str) -> None:
    assert load(GROQ_FALLBACK_MODELS=raw).groq_fallback_models == ()


def test_a_blank_fallback_list_keeps_the_default_like_every_blank_variable() -> None:
    assert load(GROQ_FALLBACK_MODELS=" ").groq_fallback_models == DEFAULT_GROQ_FALLBACK_MODELS


@pytest.mark.parametrize("raw", ["a,,b", ",a", "llama 3", "a;b c"])
def test_a_malformed_fallback_list_is_refused(raw: str) -> None:
    line = problem_for("GROQ_FALLBACK_MODELS", GROQ_FALLBACK_MODELS=raw)
    assert "separated by commas" in line and "none" in line


def test_a_retired_fallback_model_is_refused_by_name() -> None:
    line = problem_for("GROQ_FALLBACK_MODELS", GROQ_FALLBACK_MODELS="qwen/qwen3-32b,llama3-8b-8192")
    assert "retired llama3-8b-8192" in line


@pytest.mark.parametrize(
    "url", ["http://localhost:8000/v1", "https://gateway.example/openai/v1", "HTTPS://h.example"]
)
def test_an_openai_compatible_base_url_is_accepted(url: str) -> None:
    assert load(GROQ_BASE_URL=url).groq_base_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ws://localhost:8000", "unsupported scheme"),
        ("localhost:8000/v1", "no scheme"),
        ("http://", "no host"),
        ("http://h.example:port", "not a valid URL"),
    ],
)
def test_a_base_url_that_is_not_http_is_refused(url: str, why: str) -> None:
    assert why in problem_for("GROQ_BASE_URL", GROQ_BASE_URL=url)


def test_a_base_url_with_credentials_is_never_echoed() -> None:
    url = "ftp://user:s3cr3t-pw@gateway.example/v1"
    line = problem_for("GROQ_BASE_URL", GROQ_BASE_URL=url)
    assert "s3cr3t" not in line
    assert "s3cr3t" not in repr(load(GROQ_BASE_URL="https://user:s3cr3t-pw@gateway.example/v1"))


@pytest.mark.parametrize(("raw", "seconds"), [("0.5", 0.5), ("2", 2.0), ("30", 30.0)])
def test_the_attempt_timeout_is_read(raw: str, seconds: float) -> None:
    assert load(GROQ_ATTEMPT_TIMEOUT=raw).groq_attempt_timeout == seconds
    assert DEFAULT_GROQ_ATTEMPT_TIMEOUT == 2.0


@pytest.mark.parametrize("raw", ["0", "-1", "31", "inf", "nan", "soon"])
def test_an_attempt_timeout_must_be_a_bounded_positive_duration(raw: str) -> None:
    assert "at most 30" in problem_for("GROQ_ATTEMPT_TIMEOUT", GROQ_ATTEMPT_TIMEOUT=raw)


def test_retired_groq_model_is_refused() -> None:
    line = problem_for("GROQ_MODEL", GROQ_MODEL="llama3-8b-8192")
    assert "retired" in line
    assert DEFAULT_GROQ_MODEL in line


# --- prompts -----------------------------------------------------------------


def test_system_prompt_overrides_the_prompt_file() -> None:
    s = load(SYSTEM_PROMPT="  You are Bo, a terse assistant.  ", AGENT_PROMPT="nobody")
    assert s.instructions == "You are Bo, a terse assistant."
    assert s.prompt_source == "SYSTEM_PROMPT"


def test_blank_system_prompt_falls_back_to_the_file() -> None:
    assert load(SYSTEM_PROMPT="   ").prompt_source == "prompts/avery.md"


def test_unknown_agent_prompt_lists_the_choices(tmp_path: Path) -> None:
    (tmp_path / "avery.md").write_text("Avery prompt", encoding="utf-8")
    (tmp_path / "triage.md").write_text("Triage prompt", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a prompt", encoding="utf-8")
    error = problems({**REQUIRED, "AGENT_PROMPT": "bogus"}, prompts_dir=tmp_path)
    (line,) = error.problems
    assert line.startswith("AGENT_PROMPT: no prompt named 'bogus'")
    assert "available: avery, triage" in line


def test_agent_prompt_selects_a_file(tmp_path: Path) -> None:
    (tmp_path / "triage.md").write_text("\nYou triage calls.\n", encoding="utf-8")
    s = load_settings({**REQUIRED, "AGENT_PROMPT": "triage"}, prompts_dir=tmp_path)
    assert (s.instructions, s.prompt_source) == ("You triage calls.", "prompts/triage.md")


@pytest.mark.parametrize("name", ["../settings", "avery.md", "/etc/passwd", ".hidden"])
def test_agent_prompt_cannot_escape_the_prompts_dir(name: str) -> None:
    assert "no prompt named" in problem_for("AGENT_PROMPT", AGENT_PROMPT=name)


def test_empty_prompt_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "blank.md").write_text("  \n", encoding="utf-8")
    error = problems({**REQUIRED, "AGENT_PROMPT": "blank"}, prompts_dir=tmp_path)
    assert error.problems == ("AGENT_PROMPT: prompts/blank.md is empty",)


def test_the_repository_ships_the_avery_prompt() -> None:
    assert "avery" in available_prompts()
    text = (PROMPTS_DIR / "avery.md").read_text(encoding="utf-8")
    assert "Avery" in text
    assert "emergency" in text.lower()
    # It is read aloud: no markdown structure or emoji for the TTS to stumble over.
    assert not re.search(r"^\s*([-*#>]|\d+\.)\s", text, flags=re.MULTILINE)
    assert not re.search(r"[*_`#\[\]]", text)
    assert text.isascii()


# --- secrets -----------------------------------------------------------------


def test_secrets_are_not_in_repr() -> None:
    s = load(KNOWLITHIC_API_KEY=SECRETS["KNOWLITHIC_API_KEY"])
    text = repr(s) + str(s)
    for secret in SECRETS.values():
        assert secret not in text
    assert "groq_model='llama-3.3-70b-versatile'" in text
    assert s.instructions[:40] not in text  # the prompt is long: kept out of repr too


def test_secrets_are_not_in_error_messages() -> None:
    env = {
        **SECRETS,
        # credentials inside malformed URLs must not be echoed either
        "LIVEKIT_URL": f"localhost://user:{SECRETS['LIVEKIT_API_SECRET']}@host:bad",
        "KNOWLITHIC_TTS_SERVER": f"{SECRETS['KNOWLITHIC_API_KEY']}@tts:8000",
        "VAD_ACTIVATION_THRESHOLD": "20.0",
    }
    message = str(problems(env))
    assert "LIVEKIT_URL" in message
    assert "KNOWLITHIC_TTS_SERVER" in message
    for secret in SECRETS.values():
        assert secret not in message


REPO = Path(__file__).resolve().parent.parent


def _example_defaults() -> list[tuple[str, str, str]]:
    """``.env.example``'s (variable, value set, stated default) for each stated default."""
    found = []
    comment = ""
    for line in (REPO / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            comment += " " + line.lstrip("# ")
            continue
        if "=" in line and (match := re.search(r"Default: (\S+?)\.?(?:\s|\()", comment + " ")):
            name, value = line.split("=", 1)
            found.append((name, value, match.group(1)))
        comment = ""
    return found


def test_the_example_env_states_the_code_s_defaults() -> None:
    # a default changed in settings.py and not in .env.example would mislead every deployer
    stated = {name: (value, default) for name, value, default in _example_defaults()}
    assert {
        "VAD_MIN_SILENCE_DURATION",
        "ENDPOINTING_MIN_DELAY",
        "GROQ_MODEL",
        "GROQ_FALLBACK_MODELS",
        "GROQ_ATTEMPT_TIMEOUT",
    } <= set(stated)
    default = load()
    for name, (value, said) in stated.items():
        if said == "none":
            continue
        assert value == said, name
        assert load(**{name: value}) == default, f"{name}={value} is not the default"


def test_the_worker_accepts_exactly_the_urls_the_plugin_does() -> None:
    # one list of schemes, the plugin's: a scheme it learns is a scheme .env may use
    for scheme in URL_SCHEMES:
        url = load(KNOWLITHIC_TTS_SERVER=f"{scheme}://tts.example:8000").tts_server_url
        TTS(base_url=url)  # the plugin takes what the settings let through
    assert "KNOWLITHIC_TTS_SERVER" in problem_for(
        "KNOWLITHIC_TTS_SERVER", KNOWLITHIC_TTS_SERVER="ftp://tts.example"
    )


@pytest.mark.parametrize("raw", ["0", "-5", "3601", "soon", "inf"])
def test_a_livekit_connect_timeout_must_be_a_bounded_positive_duration(raw: str) -> None:
    line = problem_for("LIVEKIT_CONNECT_TIMEOUT", LIVEKIT_CONNECT_TIMEOUT=raw)
    assert "at most 3600" in line


def test_a_livekit_connect_timeout_is_read_in_seconds() -> None:
    assert load(LIVEKIT_CONNECT_TIMEOUT="20").livekit_connect_timeout == 20.0
