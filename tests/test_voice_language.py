"""The worker warns at start-up, in one line naming both variables, when the TTS voice cannot
speak the language Deepgram listens for.  The voice's language comes from the real TTS server's
``/v1/voices`` (a real process, the bundled en_US voice behind the name ``elise``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fake_livekit import closed_port, run_worker
from tests.server_process import ServerProcess
from worker.voice_language import check_voice_language, fetch_voice_language, mismatch


@pytest.fixture
async def tts_server() -> AsyncIterator[ServerProcess]:
    server = ServerProcess()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_the_server_names_the_language_of_a_voice_and_its_alias(
    tts_server: ServerProcess,
) -> None:
    assert await fetch_voice_language(tts_server.url, "elise", None) == "en_US"
    assert await fetch_voice_language(tts_server.url, "JOE", None) == "en_US"
    assert await fetch_voice_language(tts_server.url, "nobody", None) is None


async def test_an_unreachable_server_leaves_the_language_unknown() -> None:
    async with closed_port() as url:
        assert await fetch_voice_language(url, "elise", None) is None


@pytest.mark.parametrize(
    ("language", "warned"), [("multi", True), ("es", True), ("en-US", False), (None, False)]
)
async def test_dev_warns_when_the_voice_cannot_speak_the_language_heard(
    language: str | None, warned: bool, tts_server: ServerProcess, tmp_path: Path
) -> None:
    extra = {"KNOWLITHIC_TTS_SERVER": tts_server.url}
    if language is not None:
        extra["DEEPGRAM_LANGUAGE"] = language
    async with closed_port() as livekit_url:  # the worker gives up at once: only start-up matters
        run = await run_worker("dev", livekit_url, tmp_path, give_up_s=1, extra_env=extra)
    lines = [line for _, line in run.stderr_lines if "DEEPGRAM_LANGUAGE" in line]
    if not warned:
        assert lines == [], run.stderr
        return
    (line,) = lines
    assert line.startswith(f"agent.py dev: warning: DEEPGRAM_LANGUAGE={language}")
    assert "KNOWLITHIC_VOICE=elise speaks en_US" in line


def test_with_several_servers_the_first_is_asked(tts_server: ServerProcess) -> None:
    listed = f"{tts_server.url},ws://127.0.0.1:9"
    line = check_voice_language("es", listed, "elise", None)
    assert line is not None and "KNOWLITHIC_VOICE=elise speaks en_US" in line


def test_the_mismatch_line_names_both_variables() -> None:
    line = mismatch("multi", "elise", "en_US")
    assert line is not None
    assert "DEEPGRAM_LANGUAGE=multi" in line and "KNOWLITHIC_VOICE=elise" in line
    assert "DEEPGRAM_LANGUAGE=en," in line  # what to set instead
    assert mismatch("en", "elise", "en_US") is None
    assert mismatch("EN-gb", "elise", "en_US") is None
    assert mismatch("multi", "elise", None) is None  # unknown: say nothing rather than guess
