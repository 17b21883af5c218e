"""`python -m tts_custom.say`: text to a WAV file through the plugin."""

from __future__ import annotations

import asyncio
import sys
import wave
from pathlib import Path

import av
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
