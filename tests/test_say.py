"""`python -m tts_custom.say`: text to a WAV file through the plugin."""

from __future__ import annotations

import asyncio
import sys
import wave
from pathlib import Path

import pytest

from tests.fake_knowlithic import FakeKnowlithicServer, speech_for
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
    assert pcm == b"".join(speech_for(t, 16000) for t in texts)


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
