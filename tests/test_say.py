"""`python -m tts_custom.say`: text to a WAV file through the plugin."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import signal
import sys
import wave
from pathlib import Path

import av
import pytest

import knowlithic_protocol as protocol
from tests.fake_http import FakeHttpServer
from tests.fake_knowlithic import FakeKnowlithicServer, speech_for
from tests.plugin_helpers import eventually
from tts_custom import say


async def run_say(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tts_custom.say",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_writes_the_speech_to_a_wav_file(
    server: FakeKnowlithicServer, tmp_path: Path
) -> None:
    target = tmp_path / "hello.wav"
    code, out, err = await run_say(
        "Hello there. How are you?", "--url", server.url, "-o", str(target)
    )
    assert code == 0, err
    assert "wrote" in out and "first audio after" in out
    with wave.open(str(target)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        pcm = wav.readframes(wav.getnframes())
    texts = [r.text for r in server.received.requests]
    speech = b"".join(speech_for(t, 16000) for t in texts)
    # When a segment's last audio has already gone out, the framework ends the segment with
    # a 10 ms silent marker frame (livekit-agents' SynthesizeStream, timing-dependent).
    marker = pcm[len(speech) :]
    assert pcm[: len(speech)] == speech
    assert marker in (b"", b"\0" * (16000 // 100 * 2))


async def test_reads_standard_input_and_honours_options(
    server: FakeKnowlithicServer, tmp_path: Path
) -> None:
    target = tmp_path / "out.wav"
    code, _, err = await run_say(
        "-",
        "--url",
        server.url,
        "-o",
        str(target),
        "--voice",
        "joe",
        "--sample-rate",
        "24000",
        "--format",
        "pcm",
        stdin=b"From standard input.",
    )
    assert code == 0, err
    request = server.received.requests[0]
    assert (request.text, request.voice, request.sample_rate, request.output_format) == (
        "From standard input.",
        "joe",
        24000,
        "pcm",
    )


async def test_a_dead_server_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = await run_say(
        "Hello.", "--url", "ws://127.0.0.1:9", "-o", str(tmp_path / "x.wav")
    )
    assert code == 1
    assert "cannot connect to Knowlithic TTS at ws://127.0.0.1:9" in err
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "nothing to say"),
        (["Hi.", "--url", "ftp://nowhere"], "ws://host:port"),
    ],
)
def test_bad_input_is_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert say.main(args) == 2
    assert message in capsys.readouterr().err


async def test_opus_writes_the_stream_as_received_a_file_players_read(
    server: FakeKnowlithicServer, tmp_path: Path
) -> None:
    target = tmp_path / "hello.ogg"
    text = "Hello there. How are you?"
    code, out, err = await run_say(text, "--url", server.url, "--format", "opus", "-o", str(target))
    assert code == 0, err
    assert "Ogg Opus" in out and "kbit/s" in out
    (request,) = server.received.requests  # the whole text in one request
    assert (request.text, request.output_format) == (text, "opus")
    with av.open(str(target), mode="r") as container:
        stream = container.streams.audio[0]
        samples: int = sum(frame.samples for frame in container.decode(stream))
    assert samples / 48000 == pytest.approx(len(speech_for(text, 16000)) / 2 / 16000, abs=0.001)


async def test_opus_from_a_server_without_it_is_a_one_line_error(
    server: FakeKnowlithicServer, tmp_path: Path
) -> None:
    server.behavior.output_formats = ("pcm", "wav")
    target = tmp_path / "hello.ogg"
    code, _, err = await run_say(
        "Hello.", "--url", server.url, "--format", "opus", "-o", str(target)
    )
    assert code == 1
    assert "does not offer opus" in err and err.count("\n") == 1
    assert not target.exists()


@pytest.mark.parametrize("fmt", ["wav", "opus"])
async def test_an_output_path_that_cannot_be_written_is_refused_before_speaking(
    server: FakeKnowlithicServer, tmp_path: Path, fmt: str
) -> None:
    for target in (tmp_path / "missing" / "x.out", tmp_path):
        code, _, err = await run_say(
            "Hello.", "--url", server.url, "--format", fmt, "-o", str(target)
        )
        assert code == 2
        assert err.startswith(f"error: cannot write {target}") and err.count("\n") == 1
    assert not server.received.requests  # nothing synthesized for nothing


# --- every error is one line, through real sockets ----------------------------


def one_line_error(code: int, err: str, expected_code: int = 1) -> str:
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "status_code=" not in err and "retryable" not in err
    return err


async def test_a_refused_key_is_one_line(server: FakeKnowlithicServer, tmp_path: Path) -> None:
    server.behavior.api_key = "the-right-key"
    target = tmp_path / "x.wav"
    code, _, err = await run_say("Hello.", "--url", server.url, "-o", str(target))
    assert "check KNOWLITHIC_API_KEY" in one_line_error(code, err)
    assert not target.exists()


async def test_an_unknown_voice_is_one_line(server: FakeKnowlithicServer, tmp_path: Path) -> None:
    target = tmp_path / "x.wav"
    code, _, err = await run_say("Hello.", "--url", server.url, "--voice", "zed", "-o", str(target))
    line = one_line_error(code, err)
    assert "voice 'zed'" in line and "elise, joe" in line
    assert not target.exists()


@pytest.mark.parametrize("fmt", ["wav", "opus"])
async def test_a_server_error_mid_text_is_one_line_and_writes_nothing(
    server: FakeKnowlithicServer, tmp_path: Path, fmt: str
) -> None:
    text = "First one. Second one. Third one."
    failing = text if fmt == "opus" else "Third one."  # opus: the whole text is one request
    server.behavior.error_for = {failing: protocol.Error(None, "internal", "engine crashed")}
    target = tmp_path / "x.out"
    code, _, err = await run_say(text, "--url", server.url, "--format", fmt, "-o", str(target))
    assert "engine crashed" in one_line_error(code, err)
    assert not target.exists()


async def test_the_dead_server_error_is_one_line(tmp_path: Path) -> None:
    code, _, err = await run_say(
        "Hello.", "--url", "ws://127.0.0.1:9", "-o", str(tmp_path / "x.wav")
    )
    assert "cannot connect" in one_line_error(code, err)


@pytest.mark.parametrize("fmt", ["wav", "opus"])
async def test_ctrl_c_while_speaking_is_one_line_and_writes_nothing(
    server: FakeKnowlithicServer, tmp_path: Path, fmt: str
) -> None:
    server.behavior.stall = True  # the request is taken and never answered
    target = tmp_path / "x.out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tts_custom.say",
        "Hello there.",
        "--url",
        server.url,
        "--format",
        fmt,
        "-o",
        str(target),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await eventually(lambda: bool(server.received.requests), timeout=30)  # speaking has begun
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    assert one_line_error(proc.returncode, err.decode(), 130) == (
        "error: interrupted; nothing written\n"
    )
    assert not target.exists()


# --- progress ------------------------------------------------------------------

LONG_TEXT = " ".join(f"This is sentence number {i} of a long text." for i in range(1, 8))


async def test_a_long_text_shows_its_progress_by_sentence(
    server: FakeKnowlithicServer, tmp_path: Path
) -> None:
    code, out, err = await run_say(LONG_TEXT, "--url", server.url, "-o", str(tmp_path / "x.wav"))
    assert code == 0, err
    lines = err.splitlines()
    assert lines and all(line.startswith("sentence ") for line in lines), err
    assert lines[-1].startswith("sentence 7/7, ") and lines[-1].endswith(" s of audio so far")
    reached = [int(line.split()[1].split("/")[0]) for line in lines]
    assert reached == sorted(set(reached))  # one line per sentence reached, in order
    seconds = [float(line.split(", ")[1].split()[0]) for line in lines]
    assert seconds == sorted(seconds)
    assert out.startswith("wrote ")


async def test_a_short_text_shows_no_progress(server: FakeKnowlithicServer, tmp_path: Path) -> None:
    code, _, err = await run_say(
        "One. Two. Three. Four.", "--url", server.url, "-o", str(tmp_path / "x.wav")
    )
    assert (code, err) == (0, "")


async def test_on_a_terminal_the_progress_is_one_line_rewritten_then_cleared(
    server: FakeKnowlithicServer, tmp_path: Path
) -> None:
    controller, terminal = pty.openpty()  # a real terminal for stderr
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tts_custom.say",
            LONG_TEXT,
            "--url",
            server.url,
            "-o",
            str(tmp_path / "x.wav"),
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        shown = bytearray()
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(controller, 65536):
                shown += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0 and out.startswith(b"wrote ")
    text = shown.decode()
    assert "\n" not in text  # rewritten in place, never scrolled
    assert "sentence 7/7, " in text
    assert text.endswith("\r\x1b[K")  # cleared before the result line


@pytest.mark.parametrize("transport", [["--transport", "http"], []], ids=["http", "fallback"])
async def test_an_http_url_speaks_over_http_chosen_or_as_the_fallback(
    tmp_path: Path, transport: list[str]
) -> None:
    server = FakeHttpServer()
    await server.start()
    try:
        target = tmp_path / "hello.wav"
        code, out, err = await run_say(
            "Hello there. How are you?", "--url", server.url, *transport, "-o", str(target)
        )
    finally:
        await server.stop()
    assert code == 0, err
    assert "wrote" in out
    with wave.open(str(target)) as wav:
        pcm = wav.readframes(wav.getnframes())
    speech = b"".join(speech_for(t, 16000) for t in server.received.texts)
    assert pcm[: len(speech)] == speech
    assert pcm[len(speech) :] in (b"", b"\0" * (16000 // 100 * 2))


async def test_opus_over_http_writes_the_body_as_received(tmp_path: Path) -> None:
    server = FakeHttpServer()
    await server.start()
    try:
        target = tmp_path / "hello.ogg"
        text = "Hello there. How are you?"
        code, out, err = await run_say(
            text, "--url", server.url, "--transport", "http", "--format", "opus", "-o", str(target)
        )
    finally:
        await server.stop()
    assert code == 0, err
    assert "Ogg Opus" in out
    assert server.received.texts == [text]  # the whole text in one request
    with av.open(str(target), mode="r") as container:
        stream = container.streams.audio[0]
        samples: int = sum(frame.samples for frame in container.decode(stream))
    assert samples / 48000 == pytest.approx(len(speech_for(text, 16000)) / 2 / 16000, abs=0.001)
