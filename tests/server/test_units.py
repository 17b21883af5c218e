"""Word timing, admission, scheduling and configuration, without the network."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from piper.voice import PhonemeAlignment

from tts_server.admission import Capacity, RateLimiter
from tts_server.config import BUNDLED_VOICE, ServerConfig, build_parser, load_config
from tts_server.engines.piper import _chunk_intervals
from tts_server.scheduler import Scheduler
from tts_server.timestamps import (
    Interval,
    estimated_intervals,
    text_words,
    time_words,
)

# -- timestamps ------------------------------------------------------------------------------


@settings(database=None)  # keep the repository free of .hypothesis/
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=40),
    st.lists(st.floats(0.001, 0.3), min_size=1, max_size=200),
    st.floats(0, 5),
)
def test_word_times_are_monotonic_and_inside_the_phonemes(
    weights: list[int], lengths: list[float], start: float
) -> None:
    intervals = []
    position = start
    for length in lengths:
        intervals.append(Interval(position, position + length))
        position += length * 1.5  # gaps between phonemes
    words = [f"w{i}" for i in range(len(weights))]
    timed = time_words(words, weights, intervals)
    assert [t.word for t in timed] == words
    previous_end = intervals[0].start
    for t in timed:
        assert previous_end - 1e-9 <= t.start <= t.end <= intervals[-1].end + 1e-9
        previous_end = t.end


def test_words_split_in_proportion_to_their_phonemes() -> None:
    intervals = [Interval(i * 0.1, (i + 1) * 0.1) for i in range(6)]
    timed = time_words(["a", "bb"], [2, 4], intervals)
    assert [x for t in timed for x in (t.start, t.end)] == pytest.approx([0.0, 0.2, 0.2, 0.6])


def test_estimated_intervals_give_pauses_to_punctuation() -> None:
    symbols = ["a", "b", ",", " ", "c", "d"]
    intervals = estimated_intervals(symbols, 0.0, 1.0)
    assert len(intervals) == 4
    assert intervals[-1].end == pytest.approx(1.0)
    gap = intervals[2].start - intervals[1].end
    assert gap > intervals[0].end - intervals[0].start  # the comma and space take time


def test_text_words_strip_punctuation_but_keep_inner_marks() -> None:
    assert text_words('"Hello," she said — it costs $3.50; don\'t!') == [
        "Hello",
        "she",
        "said",
        "it",
        "costs",
        "$3.50",
        "don't",
    ]


def test_engine_alignments_become_intervals_on_the_trimmed_timeline() -> None:
    alignments = [
        PhonemeAlignment(phoneme, [0], samples)
        for phoneme, samples in [("^", 1000), ("h", 500), ("ˈ", 300), ("a", 700), (" ", 200)]
    ]
    # trimmed audio starts at sample 800 of the chunk, which sits 100 samples into the segment
    intervals = _chunk_intervals(alignments, 1000, 800, 2600, 100)
    assert intervals == [Interval(0.3, 0.8), Interval(1.1, 1.8)]
    assert _chunk_intervals(None, 1000, 0, 10, 0) is None


# -- admission -------------------------------------------------------------------------------


def test_capacity_is_a_hard_limit() -> None:
    capacity = Capacity(2)
    assert capacity.try_acquire() and capacity.try_acquire()
    assert not capacity.try_acquire()
    capacity.release()
    assert capacity.try_acquire()


def test_rate_limiter_is_a_token_bucket_per_client() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # other clients have their own bucket
    assert limiter.retry_after("a") == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.allow("a") and not limiter.allow("a")
    now[0] = 100.0
    assert sum(limiter.allow("a") for _ in range(10)) == 3  # refills only up to the burst


def test_rate_limit_zero_disables_it() -> None:
    limiter = RateLimiter(rate=0.0, burst=1)
    assert all(limiter.allow("a") for _ in range(100))


# -- scheduler -------------------------------------------------------------------------------


async def test_scheduler_runs_the_earliest_deadline_first() -> None:
    executor = ThreadPoolExecutor(1)
    scheduler = Scheduler(executor, 1)
    gate = threading.Event()
    order: list[str] = []

    def job(name: str) -> str:
        if name == "blocker":
            gate.wait(5)
        order.append(name)
        return name

    blocker = asyncio.create_task(scheduler.run(lambda: job("blocker"), 0.0))
    await asyncio.sleep(0.05)
    late = asyncio.create_task(scheduler.run(lambda: job("late"), 10.0))
    early = asyncio.create_task(scheduler.run(lambda: job("early"), 1.0))
    dropped = asyncio.create_task(scheduler.run(lambda: job("dropped"), 0.5))
    await asyncio.sleep(0.05)
    dropped.cancel()
    assert scheduler.queued == 2
    gate.set()
    assert list(await asyncio.gather(blocker, early, late)) == ["blocker", "early", "late"]
    assert order == ["blocker", "early", "late"]  # the cancelled job never ran
    executor.shutdown()


async def test_scheduler_passes_exceptions_through() -> None:
    executor = ThreadPoolExecutor(1)

    def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await Scheduler(executor, 1).run(boom, time.monotonic())
    executor.shutdown()


# -- configuration ---------------------------------------------------------------------------


def test_defaults_serve_localhost_8000_with_elise_as_joe() -> None:
    config = load_config([], {})
    assert config.hosts == ("localhost",) and config.port == 8000
    assert [v.name for v in config.voices] == [BUNDLED_VOICE]
    assert config.aliases == (("elise", "joe"),)
    assert config.api_key is None


def test_environment_sets_and_flags_override() -> None:
    env = {
        "KNOWLITHIC_PORT": "9000",
        "KNOWLITHIC_HOST": "0.0.0.0",
        "KNOWLITHIC_VOICE_ALIASES": "anna=joe,bob=joe",
        "KNOWLITHIC_API_KEY": "sekrit",
        "KNOWLITHIC_MAX_REQUESTS": "5",
    }
    config = load_config(["--port", "9100", "--voice-alias", "carl=joe"], env)
    assert config.port == 9100
    assert config.hosts == ("0.0.0.0",)
    assert config.aliases == (("carl", "joe"),)
    assert config.api_key == "sekrit"
    assert config.max_requests == 5
    assert "sekrit" not in repr(config)
    assert load_config([], {"KNOWLITHIC_VOICE_ALIASES": ""}).aliases == ()


def test_api_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  from-file\n")
    assert load_config(["--api-key-file", str(key_file)], {}).api_key == "from-file"


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--workers", "0"],
        ["--chunk-ms", "100"],
        ["--voice-alias", "x=nobody"],
        ["--voice-alias", "joe=joe"],
        ["--voice", "amy"],
        ["--rate-limit", "-1"],
        ["--log-level", "LOUD"],
        ["--engine", "espeak"],
        ["--opus-bitrate", "1000"],
    ],
)
def test_bad_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        load_config(argv, {})


def test_bad_environment_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        load_config([], {"KNOWLITHIC_PORT": "eighty"})


def test_help_names_every_environment_variable() -> None:
    parser, _ = build_parser({})
    text = parser.format_help().replace("\n", " ")
    names = [f.metadata["flag"].var for f in dataclasses.fields(ServerConfig)]
    for name in [*names, "API_KEY_FILE"]:
        assert f"KNOWLITHIC_{name}" in text, name


def test_every_setting_is_declared_once_and_parsed_from_its_flag_and_variable() -> None:
    # each ServerConfig field carries its own flag, variable and default: a setting added
    # there is on the command line and in the environment with nothing else to edit
    parser, _ = build_parser({})
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {"--host", "--voice", "--voice-alias", "--loudness", "--api-key-file"} <= flags
    assert len(flags) == len(dataclasses.fields(ServerConfig)) + 3  # + --api-key-file, -h
    assert load_config([], {}) == ServerConfig()
    by_flag = load_config(["--send-timeout", "1.5", "--loudness", "-18"], {})
    by_env = load_config([], {"KNOWLITHIC_SEND_TIMEOUT": "1.5", "KNOWLITHIC_LOUDNESS": "-18"})
    assert by_flag == by_env
    assert (by_flag.send_timeout, by_flag.loudness_dbfs) == (1.5, -18.0)
